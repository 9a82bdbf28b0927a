"""model.gradient_checkpointing trades compute for memory and changes nothing else: the
same run ends with the same weights (to rounding), with and without LoRA; DP-SGD, whose
per-sample hooks would see recomputed activations, refuses it in one line."""

from __future__ import annotations

import pytest
import torch

from fedgpt.config import load_config
from fedgpt.errors import ConfigError
from fedgpt.experiment import run_experiment
from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint


def final(run) -> torch.Tensor:
    return load_checkpoint(latest_checkpoint(run / "checkpoints")).weights


@pytest.mark.parametrize("lora", [False, True])
def test_checkpointing_gives_the_same_weights(lora, tiny_overrides, tmp_path):
    over = [*tiny_overrides, "baselines.enabled=false", f"model.lora.enabled={str(lora).lower()}"]
    run_experiment(load_config(None, over), tmp_path / "plain")
    summary = run_experiment(
        load_config(None, [*over, "model.gradient_checkpointing=true"]), tmp_path / "ckpt"
    )
    assert summary["rounds"] == 2
    a, b = final(tmp_path / "plain"), final(tmp_path / "ckpt")
    assert not torch.equal(a, load_checkpoint(tmp_path / "plain/checkpoints/round_000001").weights)
    assert torch.allclose(a, b, atol=1e-6, rtol=0), float((a - b).abs().max())


def test_dp_sgd_refuses_checkpointing(tiny_overrides, tmp_path):
    from fedgpt.federation.compat import check

    cfg = load_config(None, [*tiny_overrides, 'privacy.mode="dp_sgd"', "privacy.noise_multiplier=1",
                             "model.gradient_checkpointing=true"])  # fmt: skip
    with pytest.raises(ConfigError, match="set model.gradient_checkpointing = false"):
        check(cfg)


def test_the_option_turns_checkpointing_on(tiny_overrides):
    from fedgpt.models.build import build_model

    cfg = load_config(None, [*tiny_overrides, "model.gradient_checkpointing=true",
                             "model.lora.enabled=true"])  # fmt: skip
    bundle = build_model(cfg.model, ["some text to build a vocabulary"], 0)
    assert bundle.model.get_base_model().is_gradient_checkpointing
    plain = build_model(cfg.model.model_copy(update={"gradient_checkpointing": False}), ["x y"], 0)
    assert not plain.model.get_base_model().is_gradient_checkpointing
