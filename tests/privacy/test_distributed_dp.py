"""Distributed DP under SecAgg (the Skellam mechanism): the encoding, the noise the sum
carries, the accountant against its references, and runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import caesar_clients

from fedgpt.build import load_run_config
from fedgpt.config import ClientConfig, PrivacyConfig
from fedgpt.errors import ConfigError
from fedgpt.experiment import run_experiment
from fedgpt.federation.client_app import ClientApp
from fedgpt.federation.secure_sum_client import SecAggClient
from fedgpt.privacy import skellam_accountant as sa
from fedgpt.privacy.accountant import epsilon as gaussian_epsilon
from fedgpt.privacy.secagg.identity import Identities
from fedgpt.privacy.secagg.quantize import bits_for
from fedgpt.privacy.secagg.server import SecAggParams, _Round
from fedgpt.privacy.skellam import (
    BETA,
    SkellamCodec,
    conditional_round,
    min_summands,
    padded,
    rotate,
    unrotate,
)
from fedgpt.runtime import InProcessRuntime


def total(codes: list[np.ndarray]) -> np.ndarray:
    out = np.zeros_like(codes[0])
    for c in codes:
        out += c  # mod 2^64, as SecAgg sums
    return out


def test_rotation_is_orthogonal_and_inverted():
    x = torch.randn(1024, dtype=torch.float64)
    y = rotate(x, 7)
    assert float(y.norm()) == pytest.approx(float(x.norm()), rel=1e-12)
    assert torch.allclose(unrotate(y, 7), x, atol=1e-12)
    spike = torch.zeros(1024, dtype=torch.float64)
    spike[3] = 1.0  # the rotation spreads a spike over every coordinate: ±1/√d each
    assert torch.allclose(
        rotate(spike, 7).abs(), torch.full((1024,), 1 / 32.0, dtype=torch.float64)
    )


def test_conditional_rounding_keeps_the_bound_and_is_unbiased():
    rng = np.random.default_rng(0)
    v = rng.normal(size=4096) * 3
    bound = math.sqrt(float(v @ v) + 4096 / 4 + math.sqrt(2 * math.log(1 / BETA)) * 64)
    draws = np.stack([conditional_round(v, bound, rng) for _ in range(200)])
    assert (np.sqrt((draws.astype(float) ** 2).sum(1)) <= bound).all()
    assert np.abs(draws.mean(0) - v).mean() < 0.05  # rounding errors average out
    with pytest.raises(RuntimeError, match="no vector within norm"):
        conditional_round(v, 1.0, rng, tries=3)


def test_the_sum_of_encodings_decodes_to_the_sum_of_clipped_updates():
    codec = SkellamCodec(clip=1.0, noise_multiplier=0.0, min_sum=3, expected=5)
    deltas = [torch.randn(3000) * s for s in (0.001, 0.01, 0.1, 1.0, 10.0)]
    clipped = sum(d * min(1.0, 1.0 / float(d.norm())) for d in deltas)
    summed = total([codec.encode(d, rotation_seed=11) for d in deltas])
    assert codec.check_sum(summed, 5, 3000) is None
    out = codec.decode(summed, 3000, rotation_seed=11)
    # error: the rounding of 5 clients, each ≤ 1/2 per coordinate in units of 1/s
    assert torch.allclose(out, clipped.float(), atol=5 * 0.5 / codec.scale * 4)
    assert codec.words(3000) == padded(3000) + 1 == 4097


def test_the_sum_carries_the_noise_of_central_dp_and_no_less():
    """min_sum clients give noise of std z·c on every coordinate (central DP's); fewer
    would give less, which is why each client refuses a smaller survivor set."""
    codec = SkellamCodec(clip=1.0, noise_multiplier=0.8, min_sum=4, expected=4)
    zero = torch.zeros(8192)
    four = codec.decode(total([codec.encode(zero, 3) for _ in range(4)]), 8192, 3)
    two = codec.decode(total([codec.encode(zero, 3) for _ in range(2)]), 8192, 3)
    assert float(four.std()) == pytest.approx(0.8, rel=0.04)
    assert float(two.std()) == pytest.approx(0.8 / math.sqrt(2), rel=0.04)
    assert abs(float(four.mean())) < 0.05


def test_a_sum_that_no_encodings_give_is_refused():
    codec = SkellamCodec(clip=1.0, noise_multiplier=1.0, min_sum=3, expected=3)
    codes = [codec.encode(torch.randn(500) * 0.01, 1) for _ in range(3)]
    good = total(codes)
    assert codec.check_sum(good, 3, 500) is None
    assert "counts 3 encodings, not 4" in codec.check_sum(good, 4, 500)
    bad = good.copy()
    bad[17] = bad[17] ^ (np.uint64(1) << np.uint64(50))  # what one wrong mask bit does
    assert "1 of 512 values" in codec.check_sum(bad, 3, 500)


# The reference values below were computed with the authors' accountant
# (google-research/federated, distributed_dp/accounting_utils.py, ``skellam_epsilon``, its
# conversion from RDP through dp-accounting), for the settings shown, with β = e^-1/2.
REFERENCE = [
    # clip, z, d, scale, q, rounds, delta, epsilon
    (0.03, 1.0, 2**20, 2**24 / 0.03, 100 / 3400, 1500, 1 / 3400, 7.475051),
    (1.0, 2.0, 2**10, 5.0, 0.05, 500, 1e-5, 35.630092),
]


@pytest.mark.parametrize("clip,z,d,scale,q,rounds,delta,expected", REFERENCE)
def test_epsilon_matches_the_reference_accountant(clip, z, d, scale, q, rounds, delta, expected):
    got = sa.epsilon(z, q, rounds, delta, clip=clip, dim=d, scale=scale)
    assert got == pytest.approx(expected, rel=1e-6)


def test_skellam_epsilon_approaches_the_gaussian_one():
    """With s = 2^24/c the discretisation costs nothing measurable: without sampling, the
    Skellam ε equals dp-accounting's Gaussian ε; with Poisson sampling, the general
    subsampling bound (Zhu & Wang, Theorem 5) lies above the exact subsampled Gaussian,
    by the margin that bound is known to cost."""
    scale = 2**24
    for z, rounds in ((1.0, 10), (2.0, 50)):
        ours = sa.epsilon(z, 1.0, rounds, 1e-5, clip=1.0, dim=sa.MAX_DIM, scale=scale)
        assert ours == pytest.approx(gaussian_epsilon(z, 1.0, rounds, 1e-5), rel=2e-3)
    for z, q, rounds in ((1.0, 0.1, 100), (0.8, 0.01, 1000)):
        ours = sa.epsilon(z, q, rounds, 1e-5, clip=1.0, dim=sa.MAX_DIM, scale=scale)
        exact = gaussian_epsilon(z, q, rounds, 1e-5)
        assert exact < ours < 1.3 * exact


def test_noise_is_planned_for_the_target():
    shape = dict(clip=1.0, dim=sa.MAX_DIM, scale=2**24)
    z = sa.plan_noise(8.0, 0.1, 40, 1e-5, **shape)
    assert sa.epsilon(z, 0.1, 40, 1e-5, **shape) == pytest.approx(8.0, rel=1e-3)
    assert sa.epsilon(z, 0.1, 40, 1e-5, **shape) <= 8.0


def test_noise_is_sized_for_the_fewest_survivors_the_threshold_allows():
    p = PrivacyConfig(mode="distributed_dp", secure_aggregation="secagg")
    assert min_summands(10, p) == 6  # t = 5 of 9 neighbours; a sum of at least t + 1
    assert min_summands(10, p.model_copy(update={"secagg_threshold": 0.8})) == 9
    assert min_summands(10, p.model_copy(update={"secagg_neighbours": 4})) == 4


N = 8
IDS = [f"c{i}" for i in range(N)]


def test_a_server_that_sums_fewer_clients_than_the_noise_needs_is_refused():
    """The server runs a round of 4 of the 8 expected clients (saying the rest did not
    answer), so that the sum would carry the noise of 4 shares sized for 5: every client
    refuses to sign the survivor set, and nothing is unmasked."""
    fm, data = caesar_clients(N)
    w0 = fm.flat.clone()
    ids = Identities.generate(IDS)
    p = PrivacyConfig(mode="distributed_dp", secure_aggregation="secagg", noise_multiplier=1.0)
    codec = SkellamCodec(1.0, 1.0, min_summands(N, p), N)
    assert codec.min_sum == 5
    app = ClientApp.build(
        fm, data, ClientConfig(local_steps=1, batch_size=2, seq_len=16),
        secure=[SecAggClient(0.5, ids, codec)],
    )  # fmt: skip
    rt = InProcessRuntime(app)
    params = SecAggParams(1.0, bits_for(N), 1000, 0.5, 0, 0, codec=codec, rotation_seed=5)
    r = _Round(rt, None, 1, fm.flat.numel(), params, ids.public())
    few = IDS[:4]
    keys = r.advertise(few, {c: i for i, c in enumerate(few)}, w0)
    assert r.t == 2  # 3 neighbours each: the server may ask for t = 2
    masked = r.masked(r.share(keys))
    assert sorted(masked) == few
    with pytest.raises(Exception, match="only 0 clients signed"):
        r.check(masked)
    reasons = [d["reason"] for d in r.out.dropped]
    assert len(reasons) == 4 and all("noise is sized for a sum of at least 5" in x for x in reasons)


def run_rows(tmp_path, *extra):
    from conftest import TINY

    over = [*TINY, f'out_dir="{tmp_path}"', 'privacy.mode="distributed_dp"',
            'privacy.secure_aggregation="secagg"', "federation.min_clients=4", *extra]  # fmt: skip
    s = run_experiment(load_run_config(None, over), tmp_path / "r")
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    return s, rows


def test_a_distributed_dp_run_reports_the_skellam_epsilon(tmp_path):
    s, rows = run_rows(tmp_path, "privacy.noise_multiplier=0.9")
    q = 4 / s["dataset"]["num_clients"]
    want = [sa.epsilon(0.9, q, t, 1e-5, clip=1.0, dim=sa.MAX_DIM, scale=2**24) for t in (1, 2)]
    assert [r["epsilon"] for r in rows] == pytest.approx(want)
    assert all(r["participants"] == 4 and r["train_loss"] is None for r in rows)  # a count
    assert s["privacy"]["mode"] == "distributed_dp"


def test_distributed_dp_with_dropouts_and_a_target(tmp_path):
    """A client that fails whenever it is sampled: the survivors' sum is still unmasked
    (3 ≥ the 3 summands the noise is sized for), and the calibrated run spends its target."""
    s, rows = run_rows(
        tmp_path, "privacy.noise_multiplier=0", "privacy.target_epsilon=20",
        'runtime.fail_clients=["lear/REG"]', "federation.rounds=3",
        "privacy.reproducible_noise=true",
    )  # fmt: skip
    assert rows[-1]["epsilon"] == pytest.approx(20.0, rel=1e-2) and rows[-1]["epsilon"] <= 20.0
    hit = [r for r in rows if r["dropped"]]  # client ids are hidden: "(hidden)"
    assert hit and all(r["participants"] == 3 for r in hit)
    assert all(r["participants"] == 4 for r in rows if r not in hit)


def test_distributed_dp_needs_secagg():
    with pytest.raises(ConfigError) as err:
        load_run_config(None, ['privacy.mode="distributed_dp"'])
    assert str(err.value) == (
        'privacy.mode = "distributed_dp" adds its noise inside secure aggregation: set '
        'privacy.secure_aggregation = "secagg"'
    )
    with pytest.raises(ConfigError, match="adaptive_clipping is central_dp's"):
        load_run_config(None, ['privacy.mode="distributed_dp"',
                               'privacy.secure_aggregation="secagg"',
                               "privacy.adaptive_clipping=true"])  # fmt: skip
