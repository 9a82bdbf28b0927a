"""Every privacy mode runs with LoRA adapters (only adapters train, are protected and sent)."""

import json

import pytest

from fedgpt.config import load_config
from fedgpt.experiment import run_experiment


@pytest.mark.parametrize(
    "extra",
    [
        ['privacy.mode="central_dp"', "privacy.noise_multiplier=0.5"],
        [
            'privacy.mode="central_dp"',
            "privacy.noise_multiplier=0.5",
            "privacy.adaptive_clipping=true",
            "privacy.count_noise_std=2",
        ],
        ['privacy.mode="local_dp"', "privacy.noise_multiplier=0.5"],
        ['privacy.mode="dp_sgd"', "privacy.noise_multiplier=1.0"],
        ['privacy.secure_aggregation="secagg"', "federation.min_clients=3"],
        [
            'privacy.secure_aggregation="secagg"',
            "privacy.post_quantum=true",
            "federation.min_clients=3",
        ],
        ['privacy.secure_aggregation="ckks"'],
        [
            'privacy.mode="distributed_dp"',
            'privacy.secure_aggregation="secagg"',
            "federation.min_clients=3",
            "privacy.noise_multiplier=0.5",
        ],
    ],
)
def test_privacy_mode_with_lora(extra, tiny_overrides, tiny_checkpoint, tmp_path):
    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "baselines.enabled=false",
            "federation.rounds=1",
            f'model.path="{tiny_checkpoint}"',
            "model.lora.enabled=true",
            "model.lora.r=2",
            'model.lora.target_modules=["c_attn"]',
            "privacy.reproducible_noise=true",
            *extra,
        ],
    )
    s = run_experiment(cfg, tmp_path / "r")
    row = json.loads((tmp_path / "r/metrics.jsonl").read_text().splitlines()[0])
    assert s["model"]["lora"] and s["model"]["trainable_params"] == 2 * (2 * 32 + 96 * 2)
    assert row["participants"] and not row["dropped"], row["dropped"]
    if cfg.privacy.mode != "none":
        assert row["epsilon"] > 0
