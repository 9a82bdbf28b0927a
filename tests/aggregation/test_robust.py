"""Robust rules against known answers; they resist a simulated attack that fools FedAvg;
combinations that cannot work are refused with one line."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fedgpt.aggregation import aggregate
from fedgpt.aggregation.robust import (
    coordinate_median,
    krum_scores,
    multi_krum,
    norm_bounded_mean,
    trimmed_mean,
)
from fedgpt.cli.main import app
from fedgpt.client.attack import malicious_clients, poison
from fedgpt.config import load_config
from fedgpt.errors import FedGPTError
from fedgpt.experiment import run_experiment

D = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [100.0, -500.0]])


def test_median_and_trimmed_mean():
    assert torch.equal(coordinate_median(D), torch.tensor([2.5, 15.0]))
    assert torch.equal(coordinate_median(D[:3]), torch.tensor([2.0, 20.0]))
    # beta = 0.25 of 4: drop 1 at each end -> mean of the middle two
    assert torch.equal(trimmed_mean(D, 0.25), torch.tensor([2.5, 15.0]))
    with pytest.raises(FedGPTError):
        trimmed_mean(D, 0.5)


def test_krum_by_hand():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    # f = 1: K - f - 2 = 1 nearest neighbour; squared distances to the nearest other point
    assert torch.equal(krum_scores(x, 1), torch.tensor([1.0, 1.0, 1.0, 64.0], dtype=torch.float64))
    agg, chosen = multi_krum(x, torch.ones(4), 1, 3)
    assert sorted(chosen.tolist()) == [0, 1, 2] and torch.equal(agg, torch.tensor([1.0]))
    with pytest.raises(FedGPTError, match="K > f"):
        krum_scores(x, 2)


def test_norm_bounding():
    d = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    # the first is scaled to norm 1: [0.6, 0.8]; weights 1 and 3
    out = norm_bounded_mean(d, torch.tensor([1.0, 3.0]), 1.0)
    assert torch.allclose(out, (torch.tensor([0.6, 0.8]) + 3 * torch.tensor([0.3, 0.4])) / 4)


PARAMS = {"trimmed_mean": {"trim": 0.2}, "krum": {"f": 2}, "multi_krum": {"f": 2, "m": 5}}


def test_rules_resist_sign_flip_that_fools_fedavg():
    g = torch.Generator().manual_seed(0)
    honest = torch.randn(1, 50, generator=g) + 0.1 * torch.randn(8, 50, generator=g)
    attack = torch.stack([poison(honest[i], "sign_flip", 10.0, g) for i in range(2)])
    deltas = torch.cat([honest, attack])
    w = torch.ones(10)
    truth = honest.mean(0)
    err = {
        r: float((aggregate(r, deltas, w, **PARAMS.get(r, {})) - truth).norm() / truth.norm())
        for r in ("fedavg", "median", "trimmed_mean", "krum", "multi_krum")
    }
    assert err["fedavg"] > 1.0
    assert all(err[r] < 0.2 for r in ("median", "trimmed_mean", "krum", "multi_krum")), err


def test_attack_simulator_is_seeded():
    ids = [f"c{i}" for i in range(20)]
    assert malicious_clients(ids, 0.25, 0) == malicious_clients(ids, 0.25, 0)
    assert len(malicious_clients(ids, 0.25, 0)) == 5


def test_run_with_attack_and_median(tiny_overrides, tmp_path):
    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "baselines.enabled=false",
            'federation.aggregator="median"',
            "federation.min_clients=5",
            "attack.fraction=0.2",
            "federation.rounds=1",
        ],
    )
    run_experiment(cfg, tmp_path / "r")
    row = json.loads((tmp_path / "r/metrics.jsonl").read_text().splitlines()[0])
    assert len(row["participants"]) == 5 and row["test_loss"] > 0


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (
            ['federation.aggregator="median"', 'privacy.secure_aggregation="secagg"'],
            "needs individual updates",
        ),
        (
            ['federation.aggregator="krum"', 'privacy.secure_aggregation="ckks"'],
            "needs individual updates",
        ),
        (
            ['federation.aggregator="trimmed_mean"', 'privacy.mode="central_dp"'],
            "cannot replace the clipped noisy sum",
        ),
    ],
)
def test_incompatible_combinations_exit_2(sets, needle):
    res = CliRunner().invoke(app, ["run", *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 2 and needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_dissimilarity_by_hand():
    from fedgpt.aggregation import dissimilarity

    agg = torch.tensor([1.0, 0.0])
    rel, cos = dissimilarity(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), agg)
    assert torch.allclose(rel, torch.tensor([0.0, 2**0.5, 2.0]))
    assert torch.allclose(cos, torch.tensor([1.0, 0.0, -1.0]))


def test_bucketing_by_hand():
    from fedgpt.aggregation.robust import bucket_means

    deltas = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 6.0], [100.0, 100.0]])
    n = torch.tensor([1.0, 1.0, 2.0, 2.0, 1.0])
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(3))
    means, w = bucket_means(deltas, n, 2, torch.Generator().manual_seed(3))
    # buckets by position in the permutation: {perm[0], perm[1]}, {perm[2], perm[3]}, {perm[4]}
    for b, members in enumerate([perm[:2], perm[2:4], perm[4:]]):
        expect = (deltas[members] * n[members, None]).sum(0) / n[members].sum()
        assert torch.allclose(means[b], expect)
        assert float(w[b]) == float(n[members].sum())
    # the rule runs on the bucket means; bucket = 1 is the plain rule
    got = aggregate("median", deltas, n, bucket=2, gen=torch.Generator().manual_seed(3))
    assert torch.allclose(got, means.sort(dim=0).values[1])
    assert torch.equal(aggregate("median", deltas, n, bucket=1), deltas[2])


def test_streaming_rules_fold_one_update_at_a_time():
    from fedgpt.aggregation import AGGREGATORS, ServerContext
    from fedgpt.aggregation.fedavg import coverage_average, weighted_average

    streaming = [n for n in AGGREGATORS if AGGREGATORS.get(n).streaming]
    assert streaming == ["fedavg"]  # every other rule declares it needs all updates
    g = torch.Generator().manual_seed(1)
    deltas, n = torch.randn(5, 300, generator=g), torch.tensor([3.0, 1.0, 7.0, 2.0, 5.0])
    cls = AGGREGATORS.get("fedavg")
    fedavg = cls(cls.Config(kind="fedavg"), ServerContext())
    acc = fedavg.begin({}, 300, 1)
    for d, w in zip(deltas, n.tolist(), strict=True):  # as replies arrive
        fedavg.fold(acc, d, w, float(d.norm()))
    got = fedavg.finish(acc, {}, g).delta
    assert torch.allclose(got, weighted_average(deltas, n), atol=1e-6)
    # device tiers: each slice folded through its indices, averaged per coordinate
    masks = {"s": torch.arange(300) < 100, "m": torch.arange(300) < 200}
    tiers = ["s", "m", None, "s", "m"]
    acc = fedavg.begin({}, 300, 1)
    for d, w, t in zip(deltas, n.tolist(), tiers, strict=True):
        index = None if t is None else masks[t].nonzero().squeeze(1)
        fedavg.fold(acc, d if t is None else d[masks[t]], w, 0.0, index, t)
    full = torch.stack([masks[t] if t else torch.ones(300, dtype=torch.bool) for t in tiers])
    want = coverage_average(deltas * full, full, n)
    assert torch.allclose(fedavg.finish(acc, {}, g, masks).delta, want, atol=1e-6)
    # an identical copy taken back out leaves the others' mean
    acc = fedavg.begin({}, 300, 1)
    for d, w in zip(deltas, n.tolist(), strict=True):
        fedavg.fold(acc, d, w, 0.0)
    fedavg.fold(acc, deltas[2], 7.0, 0.0, sign=-1)
    keep = [0, 1, 3, 4]
    want = weighted_average(deltas[keep], n[keep])
    assert torch.allclose(fedavg.finish(acc, {}, g).delta, want, atol=1e-5)
