"""Learned attention fusion: α = softmax(MLP(meta)) trained on public validation loss."""

import torch

from fedgpt.aggregation.attention import (
    attention_weights,
    client_meta,
    fit_attention,
    init_mlp,
)
from fedgpt.client.trainer import lm_loss
from fedgpt.config import load_config
from fedgpt.experiment import prepare


def test_meta_is_standardised_and_uniform_at_start():
    cfgs = [
        {"num_examples": 100, "metrics": {"loss_first": 3.0, "loss_last": 2.0, "update_norm": 1}},
        {"num_examples": 900, "metrics": {"loss_first": 3.5, "loss_last": 2.5, "update_norm": 4}},
    ]
    meta = client_meta(cfgs, [1.0, 0.5])
    assert meta.shape == (2, 6)
    assert torch.allclose(meta.mean(0), torch.zeros(6), atol=1e-6)
    theta = init_mlp(8, torch.Generator().manual_seed(0))
    assert torch.allclose(attention_weights(theta, meta), torch.full((2,), 0.5))


def test_attention_learns_to_down_weigh_a_harmful_update(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, 'data.public_plays=["macbeth"]'])
    prep = prepare(cfg)
    from fedgpt.client.trainer import local_update
    from fedgpt.tasks.windows import sample_windows

    gen = torch.Generator().manual_seed(0)
    val = sample_windows(prep.public, 8, 32, gen)
    w = prep.init.clone()
    good = local_update(prep.fm, w, prep.public, cfg.client, gen, "pub", 1).delta
    noise = torch.randn(good.shape, generator=torch.Generator().manual_seed(5))
    bad = noise * (4 * good.norm() / noise.norm())  # a noise attack, 4x the norm
    deltas = torch.stack([good, bad])
    cfgs = [{"num_examples": 50, "metrics": {"update_norm": float(d.norm())}} for d in deltas]
    meta = client_meta(cfgs, [1.0, 1.0])
    theta = init_mlp(8, torch.Generator().manual_seed(0))
    alpha, theta2, losses = fit_attention(prep.fm, theta, meta, w, deltas, val, 20, 0.1)
    # (α depends on meta only: a sign flip of equal norm would look the same to the MLP)
    assert alpha[0] > 0.9  # the helpful update dominates
    prep.fm.load(w + alpha @ deltas)
    learnt = float(lm_loss(prep.fm.model.eval(), val))
    prep.fm.load(w + 0.5 * good + 0.5 * bad)
    uniform = float(lm_loss(prep.fm.model.eval(), val))
    assert learnt < uniform and losses[-1] < losses[0]
    assert not torch.equal(theta2["attention.w2"], theta["attention.w2"])


def test_attention_run_logs_alpha_per_client(tiny_overrides, tmp_path):
    import json

    from fedgpt.experiment import run_experiment

    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "baselines.enabled=false",
            'data.public_plays=["macbeth"]',
            'federation.aggregator="attention"',
            "devices.mix={full = 0.5, embeddings = 0.5}",
            "federation.min_clients=4",
        ],
    )
    run_experiment(cfg, tmp_path / "r")
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    for row in rows:
        a = row["attention"]
        assert set(a) == set(row["participants"]) and abs(sum(a.values()) - 1) < 1e-5
    from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint

    ck = load_checkpoint(latest_checkpoint(tmp_path / "r/checkpoints"))
    assert "attention.w1" in ck.server_state
