"""Hybrid aggregation exactly as written: w_{t+1} = Σ (n_k/n) w^(k) + λ·Δ_public."""

import torch

from fedgpt.client.trainer import make_optimizer, train_steps
from fedgpt.config import load_config
from fedgpt.experiment import prepare, run_experiment
from fedgpt.seeding import client_seed


def test_hybrid_formula(tiny_overrides, tmp_path):
    sets = [
        *tiny_overrides,
        "baselines.enabled=false",
        "federation.rounds=1",
        'federation.server_optimizer="fedavg"',
        "federation.server_lr=1.0",
        'data.public_plays=["macbeth"]',
    ]
    plain = load_config(None, sets)
    hybrid = load_config(None, [*sets, "federation.hybrid_lambda=0.5", "federation.hybrid_steps=3"])
    run_experiment(plain, tmp_path / "plain")
    run_experiment(hybrid, tmp_path / "hybrid")
    from safetensors.torch import load_file

    w_avg = load_file(tmp_path / "plain/checkpoints/round_000001/weights.safetensors")["weights"]
    w_new = load_file(tmp_path / "hybrid/checkpoints/round_000001/weights.safetensors")["weights"]
    # Δ_public by hand: 3 steps on the public plays from the average, same generator
    prep = prepare(hybrid)
    assert prep.public is not None and prep.public.numel() > 10_000
    assert not any(c.client_id.startswith("macbeth/") for c in prep.clients)
    prep.fm.load(w_avg)
    opt = make_optimizer(prep.fm, hybrid.client)
    gen = torch.Generator().manual_seed(client_seed(hybrid.seed, 1, "__public__"))
    train_steps(prep.fm, opt, prep.public, hybrid.client, 3, gen)
    delta_public = prep.fm.flat - w_avg
    assert torch.allclose(w_new, w_avg + 0.5 * delta_public, atol=1e-6)
    assert float(delta_public.norm()) > 0
