"""Device tiers: slices by name, memory-budget choice, coverage averaging by hand, a run
where only the trained slice travels."""

import json

import pytest
import torch

from fedgpt.aggregation import coverage_average
from fedgpt.config import ModelConfig, load_config
from fedgpt.errors import ConfigError
from fedgpt.experiment import run_experiment
from fedgpt.models.build import build_char_gpt2
from fedgpt.models.params import ParamSpec
from fedgpt.models.tiers import choose_tier, estimate_mb, tier_mask, tier_params


@pytest.fixture(scope="module")
def spec():
    b = build_char_gpt2(ModelConfig(n_layer=2, n_embd=32, n_head=2, context=64), ["abc"], 0)
    return ParamSpec.from_model(b.model)


def test_tier_slices_by_name(spec):
    names = lambda t: [n for n, k in zip(spec.names, tier_params(spec, t, 2), strict=True) if k]  # noqa: E731
    assert names("embeddings") == ["transformer.wte.weight", "transformer.wpe.weight"]
    top = names("top_blocks:1")
    assert all(".h.0." not in n for n in top) and any(".h.1." in n for n in top)
    assert "lm_head.weight" in top and "transformer.ln_f.weight" in top
    assert int(tier_mask(spec, "full", 2).sum()) == spec.numel
    emb = tier_mask(spec, "embeddings", 2)
    assert int(emb.sum()) == 4 * 32 + 64 * 32 and emb[:10].all()  # wte (4 x 32) comes first
    with pytest.raises(ConfigError, match="top_blocks:k"):
        tier_params(spec, "top_blocks:3", 2)


def test_memory_budget_picks_the_largest_tier_that_fits(spec):
    est = {
        t: estimate_mb(spec, t, 2, 32, 4, 16, 64) for t in ("full", "top_blocks:1", "embeddings")
    }
    assert est["full"] > est["top_blocks:1"] > est["embeddings"]
    assert choose_tier(spec, est["full"] + 0.01, 2, 32, 4, 16, 64) == "full"
    assert choose_tier(spec, est["full"] - 0.01, 2, 32, 4, 16, 64) == "top_blocks:1"
    assert choose_tier(spec, est["embeddings"] + 0.01, 2, 32, 4, 16, 64) == "embeddings"
    with pytest.raises(ConfigError, match="below the smallest tier"):
        choose_tier(spec, est["embeddings"] / 2, 2, 32, 4, 16, 64)


def test_coverage_average_by_hand():
    # 3 clients, 4 parameters; client 2 trained only the first two, nobody the last
    deltas = torch.tensor([[1.0, 2.0, 3.0, 0.0], [3.0, 4.0, 5.0, 0.0], [10.0, 20.0, 0.0, 0.0]])
    masks = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    n = torch.tensor([1.0, 1.0, 2.0])
    out = coverage_average(deltas, masks, n)
    # p0: (1 + 3 + 2*10) / 4 = 6; p1: (2 + 4 + 40) / 4 = 11.5; p2: (3 + 5) / 2 = 4; p3: 0
    assert torch.allclose(out, torch.tensor([6.0, 11.5, 4.0, 0.0]))


def test_run_sends_only_each_clients_slice(tiny_overrides, tmp_path):
    from safetensors.torch import load_file

    from fedgpt.experiment import prepare

    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "baselines.enabled=false",
            "federation.rounds=1",
            "federation.min_clients=4",
            'devices.tier="embeddings"',
        ],
    )
    prep = prepare(cfg)
    init = {n: p.detach().clone() for n, p in prep.bundle.model.named_parameters()}
    slice_floats = int(tier_mask(prep.fm.spec, "embeddings", 2).sum())
    run_experiment(cfg, tmp_path / "r")
    row = json.loads((tmp_path / "r/metrics.jsonl").read_text().splitlines()[0])
    assert row["bytes_up"] == 4 * slice_floats * len(row["participants"])
    assert row["bytes_up"] < row["bytes_down"] / 5  # the full model went down
    final = load_file(tmp_path / "r/model/model.safetensors")
    changed = {k for k in final if not torch.equal(final[k], init[k])}
    assert changed == {"transformer.wte.weight", "transformer.wpe.weight"}


def test_tiers_refuse_privacy_and_unknown_clients(tiny_overrides, tmp_path):
    base = [*tiny_overrides, "baselines.enabled=false", "federation.rounds=1"]
    with pytest.raises(ConfigError, match="coverage counts"):
        run_experiment(
            load_config(None, [*base, 'devices.tier="embeddings"', 'privacy.mode="local_dp"']),
            tmp_path / "a",
        )
    with pytest.raises(ConfigError, match="unknown client"):
        run_experiment(
            load_config(None, [*base, 'devices.tiers={"nobody" = "full"}']), tmp_path / "b"
        )


def test_lora_rank_tier_masks_rank_components():
    from fedgpt.config import LoraConfig
    from fedgpt.models.build import add_lora

    mc = ModelConfig(n_layer=2, n_embd=32, n_head=2, context=64, lora=LoraConfig(enabled=True, r=4))
    lspec = ParamSpec.from_model(add_lora(build_char_gpt2(mc, ["abc"], 0), mc).model)
    m = tier_mask(lspec, "lora:1", 2, lora_r=4)
    off = 0
    for name, shape in zip(lspec.names, lspec.shapes, strict=True):
        size = shape[0] * shape[1]
        part = m[off : off + size].reshape(shape)
        off += size
        if "lora_A" in name:  # row 0 of A (1 x in) is the rank-1 slice
            assert part[0].all() and not part[1:].any()
        else:  # column 0 of B
            assert part[:, 0].all() and not part[:, 1:].any()
    assert int(m.sum()) * 4 == lspec.numel  # r = 1 of 4 components
    with pytest.raises(ConfigError, match="lora:r"):
        tier_mask(lspec, "lora:5", 2, lora_r=4)
    with pytest.raises(ConfigError, match="lora:r"):
        tier_mask(lspec, "embeddings", 2, lora_r=4)
    # memory budgets pick a halved rank when the full adapter does not fit
    full = estimate_mb(lspec, "full", 2, 32, 4, 16, 64, lora_r=4)
    half = estimate_mb(lspec, "lora:2", 2, 32, 4, 16, 64, lora_r=4)
    assert half < full
    assert choose_tier(lspec, (full + half) / 2, 2, 32, 4, 16, 64, lora_r=4) == "lora:2"


def test_heterogeneous_lora_ranks_federate(tiny_overrides, tmp_path):
    """HetLoRA zero-padding: a rank-1 client changes only rank component 0 (its zeroed
    components get exactly zero gradient), sends only that slice, and the server averages
    each component over the clients holding it."""
    from fedgpt.experiment import prepare

    base = [
        *tiny_overrides,
        "baselines.enabled=false",
        "federation.rounds=1",
        "federation.min_clients=2",
        "federation.fraction=0.01",
        "model.lora.enabled=true",
        "model.lora.r=4",
    ]
    cfg = load_config(None, [*base, 'devices.tier="lora:1"'])
    prep = prepare(cfg)
    spec = prep.fm.spec
    m1 = tier_mask(spec, "lora:1", 2, lora_r=4)
    run_experiment(cfg, tmp_path / "r")
    row = json.loads((tmp_path / "r/metrics.jsonl").read_text().splitlines()[0])
    assert len(row["participants"]) == 2
    assert row["bytes_up"] == 4 * int(m1.sum()) * 2

    # one client at rank 1, the other at full rank 4: hand-check the coverage average
    from fedgpt.federation.client_app import ClientApp
    from fedgpt.messages import Message
    from fedgpt.seeding import client_seed

    ids = row["participants"]
    from fedgpt.client.steps import TierSlice
    from fedgpt.models.tiers import tier_params

    tiers = {ids[0]: ("lora:1", tier_params(spec, "lora:1", 2, 4), m1)}
    app = ClientApp.build(prep.fm, prep.data, cfg.client, before=[TierSlice(tiers)])
    w0 = prep.init
    replies = {
        c: app(c, Message("train", {"round": 1, "seed": client_seed(0, 1, c)}, {"weights": w0}))
        for c in ids
    }
    d0, d1 = replies[ids[0]].tensors["delta"], replies[ids[1]].tensors["delta"]
    assert d0.numel() == int(m1.sum()) and d1.numel() == spec.numel
    n0, n1 = (replies[c].config["num_examples"] for c in ids)
    full0 = torch.zeros(spec.numel)
    full0[m1] = d0
    masks = torch.stack([m1, torch.ones_like(m1)])
    avg = coverage_average(
        torch.stack([full0, d1]), masks, torch.tensor([n0, n1], dtype=torch.float64)
    )
    expect = d1.clone()
    expect[m1] = (n0 * d0 + n1 * d1[m1]) / (n0 + n1)
    assert torch.allclose(avg, expect, atol=1e-7)
    # the rank-1 client trained with components 1..3 zeroed: its slice differs from what
    # it would have learnt with the full adapter in place
    assert not torch.allclose(d0, d1[m1])
