"""model.dtype and runtime.device.

bfloat16 mixed precision stores the frozen weights in bfloat16 and keeps the trainable
ones (and so every update) in float32; a run ends near the float32 run, not on it. A
device that is not there is refused in one line, before anything is written."""

from __future__ import annotations

import pytest
import torch

from fedgpt.build import prepare
from fedgpt.config import load_config
from fedgpt.errors import ConfigError
from fedgpt.experiment import run_experiment
from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint
from fedgpt.models.device import resolve_device


def final(run) -> torch.Tensor:
    return load_checkpoint(latest_checkpoint(run / "checkpoints")).weights


def test_bfloat16_stores_frozen_weights_low_and_trainable_ones_in_float32(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "model.lora.enabled=true", 'model.dtype="bfloat16"'])
    prep = prepare(cfg)
    frozen = {p.dtype for p in prep.bundle.model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in prep.bundle.model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    assert prep.init.dtype == torch.float32 and prep.init.device.type == "cpu"


@pytest.mark.parametrize(
    "extra",
    [["model.lora.enabled=true"], ['privacy.mode="dp_sgd"', "privacy.noise_multiplier=1",
                                   "privacy.reproducible_noise=true"]],
    ids=["lora", "dp_sgd"],
)  # fmt: skip
def test_a_bfloat16_run_ends_near_the_float32_run(extra, tiny_overrides, tmp_path):
    over = [*tiny_overrides, "baselines.enabled=false", *extra]
    full = run_experiment(load_config(None, over), tmp_path / "fp32")
    mixed = run_experiment(load_config(None, [*over, 'model.dtype="bfloat16"']), tmp_path / "bf16")
    assert mixed["model"]["dtype"] == "bfloat16" and mixed["rounds"] == 2
    a, b = final(tmp_path / "fp32"), final(tmp_path / "bf16")
    assert a.dtype == b.dtype == torch.float32
    assert not torch.equal(a, b)  # the forward pass did run in bfloat16
    start = load_checkpoint(tmp_path / "fp32/checkpoints/round_000001").weights
    assert float((a - b).norm()) < 0.1 * float((a - start).norm()) + 1e-3
    la, lb = full["federated"]["test_loss"], mixed["federated"]["test_loss"]
    assert abs(la - lb) < 0.02 * la, (la, lb)


def test_auto_is_the_cpu_without_cuda():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_missing_cuda_device_is_one_line_and_nothing_is_written(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, 'runtime.device="cuda:1"'])
    with pytest.raises(ConfigError, match=r"^runtime.device 'cuda:1': this machine has no CUDA"):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU"])
def test_an_unknown_device_name_is_refused(bad, tiny_overrides):
    with pytest.raises(ConfigError, match="runtime.device"):
        load_config(None, [*tiny_overrides, f'runtime.device="{bad}"'])


def test_a_bfloat16_lora_model_is_saved_merged_in_float32(tiny_overrides, tmp_path):
    from safetensors.torch import load_file

    from fedgpt.models.build import save_model

    cfg = load_config(None, [*tiny_overrides, "model.lora.enabled=true", 'model.dtype="bfloat16"'])
    prep = prepare(cfg)
    model = prep.bundle.model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(1e-3 * torch.randn(p.shape, generator=gen))
    import copy

    want = copy.deepcopy(model).float().merge_and_unload().state_dict()
    base = {k: v.float() for k, v in copy.deepcopy(model).unload().state_dict().items()}
    save_model(prep.bundle, tmp_path / "m")
    got = load_file(tmp_path / "m" / "model.safetensors")
    moved = [k for k in got if k in base and not torch.equal(want[k], base[k])]
    assert moved  # the adapters changed some weights
    for k in moved:
        assert got[k].dtype == torch.float32
        delta = (want[k] - base[k]).norm()
        assert float((got[k] - want[k]).norm()) < 1e-3 * float(delta), k
