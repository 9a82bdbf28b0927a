"""Record-level DP-SGD with Opacus: exact without noise/clipping, per-sample clipping bounds
the step, noise std as configured, per-client epsilon accounted and enforced."""

import json

import pytest
import torch

from fedgpt.client.trainer import ClientData, lm_loss
from fedgpt.config import ClientConfig, ModelConfig, PrivacyConfig, load_config
from fedgpt.experiment import run_experiment
from fedgpt.federation.client_app import ClientApp
from fedgpt.models.build import build_char_gpt2
from fedgpt.models.params import bind_flat
from fedgpt.privacy.accountant import epsilon
from fedgpt.privacy.dp_sgd import dp_sgd_update, record_windows
from fedgpt.runtime import Message

pytest.importorskip("opacus")

TEXT = "When shall we three meet again\nIn thunder, lightning, or in rain?\n" * 3


def tiny():
    b = build_char_gpt2(ModelConfig(n_layer=2, n_embd=32, n_head=2, context=64), [TEXT], 0)
    return b, bind_flat(b.model)


def test_without_noise_or_clipping_it_is_plain_sgd_on_all_records():
    b, fm = tiny()
    tokens = torch.from_numpy(b.codec.encode(TEXT))
    cfg = ClientConfig(
        optimizer="sgd", lr=0.5, local_steps=1, batch_size=100, seq_len=16, grad_clip=0.0
    )
    pcfg = PrivacyConfig(
        mode="dp_sgd", noise_multiplier=1e-12, clip_norm=1e6, reproducible_noise=True
    )
    w0 = fm.flat.clone()
    up, q = dp_sgd_update(fm, w0, tokens, cfg, pcfg, torch.Generator().manual_seed(0), "a", 1)
    assert q == 1.0
    fm.load(w0)
    fm.zero_grad()
    lm_loss(fm.model, record_windows(tokens, 16)).backward()
    assert torch.allclose(up.delta, -0.5 * fm.grad, atol=1e-5)
    # the flat gradient buffer is bound again after Opacus replaced the .grad tensors
    assert all(p.grad.data_ptr() >= fm.grad.data_ptr() for p in fm.params())


def test_per_sample_clipping_bounds_the_step_and_noise_has_the_set_std():
    b, fm = tiny()
    tokens = torch.from_numpy(b.codec.encode(TEXT))
    cfg = ClientConfig(optimizer="sgd", lr=1.0, local_steps=1, batch_size=100, seq_len=16)
    w0 = fm.flat.clone()
    clip = PrivacyConfig(
        mode="dp_sgd", noise_multiplier=1e-12, clip_norm=0.01, reproducible_noise=True
    )
    up, _ = dp_sgd_update(fm, w0, tokens, cfg, clip, torch.Generator().manual_seed(0), "a", 1)
    assert up.metrics["update_norm"] <= 0.01 + 1e-6
    noisy = PrivacyConfig(
        mode="dp_sgd", noise_multiplier=2.0, clip_norm=0.01, reproducible_noise=True
    )
    up, _ = dp_sgd_update(fm, w0, tokens, cfg, noisy, torch.Generator().manual_seed(0), "a", 1)
    n = record_windows(tokens, 16).shape[0]
    # noise std per coordinate: z*C / expected batch (= n records), times lr 1
    assert float(up.delta.std()) == pytest.approx(2.0 * 0.01 / n, rel=0.05)


def test_client_accounts_and_enforces_its_own_epsilon():
    b, fm = tiny()
    tokens = torch.from_numpy(b.codec.encode(TEXT))
    data = {"a": ClientData("a", tokens, tokens[:40])}
    cfg = ClientConfig(local_steps=3, batch_size=2, seq_len=16)
    n = record_windows(tokens, 16).shape[0]
    e1 = epsilon(1.0, 2 / n, 3, 1e-5)
    e2 = epsilon(1.0, 2 / n, 6, 1e-5)
    pcfg = PrivacyConfig(
        mode="dp_sgd", noise_multiplier=1.0, target_epsilon=(e1 + e2) / 2, reproducible_noise=True
    )
    app = ClientApp.build(fm, data, cfg, pcfg)
    w = fm.flat.clone()
    r1 = app("a", Message("train", {"round": 1, "seed": 1}, {"weights": w}))
    assert r1.type == "train/result"
    assert r1.config["metrics"]["epsilon"] == pytest.approx(e1)
    r2 = app("a", Message("train", {"round": 2, "seed": 2}, {"weights": w}))
    assert r2.type == "train/failure" and r2.config["reason"] == "privacy budget exhausted"


def test_dp_sgd_run_reports_the_largest_client_epsilon(tiny_overrides, tmp_path):
    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "baselines.enabled=false",
            'privacy.mode="dp_sgd"',
            "privacy.noise_multiplier=1.0",
            "privacy.reproducible_noise=true",
        ],
    )
    s = run_experiment(cfg, tmp_path / "r")
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert all(r["epsilon"] > 0 for r in rows) and rows[1]["epsilon"] >= rows[0]["epsilon"]
    assert s["privacy"]["mode"] == "dp_sgd" and s["privacy"]["epsilon"] == rows[-1]["epsilon"]
