"""Update compression (client.compress): QSGD is unbiased with the bytes it claims; top-k's
error feedback loses nothing over rounds; half casts round as their dtype does; every
malformed compressed update is refused in one line; a federation with each codec trains
and counts exactly the bytes that travelled; secure aggregation refuses compression."""

import json
import math

import pytest
import torch
from conftest import TINY

from fedgpt.client.compress import decode, encode, pack, top_k, unpack
from fedgpt.config import load_config
from fedgpt.errors import ConfigError
from fedgpt.experiment import run_experiment


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["qsgd8", "qsgd4"])
def test_qsgd_is_unbiased_and_as_small_as_claimed(kind):
    v = torch.randn(3000, generator=gen(1)) * torch.linspace(0.01, 3, 3000)
    n = 2000
    total = torch.zeros_like(v)
    for i in range(n):
        enc = encode(kind, v, gen(100 + i), bucket=512)
        out, why = decode(kind, enc, {3000}, bucket=512)
        assert why is None
        total += out
    mean = total / n
    s = 127 if kind == "qsgd8" else 7
    scale = v.view(-1)[:2560].view(-1, 512).abs().amax(1).max()
    # each value's error is at most scale/s; its mean over n draws has std ≤ scale/(2s√n)
    assert (mean - v).abs().max() < 6 * float(scale) / (2 * s * n**0.5)
    buckets, padded = 6, 3072
    body = padded if kind == "qsgd8" else padded // 2
    assert sum(t.numel() * t.element_size() for t in enc.values()) == body + 4 * buckets + 8


def test_four_bit_packing_keeps_every_level():
    q = torch.arange(-7, 8, dtype=torch.int8).repeat(3)[:-1]  # odd length
    assert torch.equal(unpack(pack(q, 7), 7, q.numel()), q)
    assert pack(q, 7).numel() == (q.numel() + 1) // 2


def test_half_casts_round_as_their_dtype():
    v = torch.randn(1000, generator=gen(2))
    for kind, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        enc = encode(kind, v, gen())
        assert enc["delta"].dtype == dtype
        out, why = decode(kind, enc, {1000})
        assert why is None and torch.equal(out, v.to(dtype).float())


def test_top_k_with_error_feedback_loses_nothing_over_rounds():
    from fedgpt.client.algorithm import ClientRound
    from fedgpt.client.compress import Compress
    from fedgpt.client.trainer import Update

    step = Compress("topk", fraction=0.05)
    sent = torch.zeros(400)
    given = torch.zeros(400)
    for r in range(6):
        d = torch.randn(400, generator=gen(r))
        given += d
        up = step.after(ClientRound("a", r, 0, gen()), Update("a", r, d, 1))
        assert up.payload["delta_idx"].numel() == 20
        out, why = decode("topk", up.payload, {400})
        assert why is None
        sent += out
    assert torch.allclose(sent + step.residual["a"], given, atol=1e-5)
    idx, val = top_k(torch.tensor([0.1, -5.0, 2.0, 0.0]), 0.5)
    assert idx.tolist() == [1, 2] and val.tolist() == [-5.0, 2.0]


def bad(kind, **change):
    enc = encode(kind, torch.randn(1024, generator=gen()), gen(), fraction=0.1)
    enc.update(change)
    return decode(kind, enc, {1024})


@pytest.mark.parametrize(
    ("kind", "change", "reason"),
    [
        (
            "topk",
            {"delta_idx": torch.tensor([5, 2000], dtype=torch.int32), "delta_val": torch.ones(2)},
            "indices out of range or not increasing",
        ),
        (
            "topk",
            {"delta_idx": torch.tensor([7, 7], dtype=torch.int32), "delta_val": torch.ones(2)},
            "indices out of range or not increasing",
        ),
        ("topk", {"delta_numel": torch.tensor([10**12])}, "declares a length"),
        ("qsgd8", {"delta_scale": torch.full((2,), float("nan"))}, "non-finite scale"),
        ("qsgd8", {"delta_q": torch.full((1024,), 128, dtype=torch.uint8)}, "level beyond"),
        ("qsgd4", {"delta_q": torch.zeros(3, dtype=torch.uint8)}, "wrong number of values"),
        ("qsgd8", {"extra": torch.zeros(1)}, "must carry"),
        ("fp16", {"delta": torch.zeros(1024)}, "not a 1-D float16 tensor"),
    ],  # fmt: skip
)
def test_malformed_compressed_updates_are_refused_in_one_line(kind, change, reason):
    out, why = bad(kind, **change)
    assert out is None and reason in why and "\n" not in why


def run(tmp_path, *extra):
    cfg = load_config(
        None,
        [*TINY, "baselines.enabled=false", "federation.rounds=3", "federation.min_clients=3",
         "runtime.threads=1", f'out_dir="{tmp_path}"', 'name="x"', *extra],
    )  # fmt: skip
    summary = run_experiment(cfg, tmp_path / "x")
    rows = [json.loads(x) for x in (tmp_path / "x" / "metrics.jsonl").read_text().splitlines()]
    return summary["federated"]["test_loss"], sum(r.get("bytes_up", 0) for r in rows)


def test_each_codec_trains_and_counts_the_bytes_that_travelled(tmp_path):
    loss, up = run(tmp_path / "none")
    numel = up // (4 * 3 * 3)  # float32, 3 clients, 3 rounds
    padded = numel + (-numel) % 512
    expect = {
        "fp16": 2 * numel,
        "bf16": 2 * numel,
        "qsgd8": padded + 4 * (padded // 512) + 8,
        "qsgd4": padded // 2 + 4 * (padded // 512) + 8,
        "topk": 8 * round(0.01 * numel) + 8,
    }
    untrained = math.log(70)  # about uniform over the characters
    for kind, per_update in expect.items():
        got, bytes_up = run(tmp_path / kind, f'client.compression="{kind}"')
        assert bytes_up == 9 * per_update, kind
        if kind == "topk":
            assert got < untrained, kind  # 1 % of the values a round: it learns, slowly
        else:
            assert abs(got - loss) < 0.05 * loss, kind


def test_compression_composes_with_local_dp_and_refuses_secure_aggregation(tmp_path):
    loss, _ = run(tmp_path, 'client.compression="qsgd8"', 'privacy.mode="local_dp"')
    assert math.isfinite(loss)
    with pytest.raises(ConfigError, match='client.compression = "qsgd8" does not combine with '
                                          'secure_aggregation = "secagg"'):  # fmt: skip
        run(
            tmp_path / "secagg", 'client.compression="qsgd8"', 'privacy.secure_aggregation="secagg"'
        )
