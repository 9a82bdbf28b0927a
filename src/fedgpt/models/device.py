"""Where the model runs and in what precision: ``runtime.device`` and ``model.dtype``.

* ``runtime.device``: ``auto`` (the first CUDA device when there is one, else the CPU),
  ``cpu``, ``cuda`` or ``cuda:N``. The model, its flat trainable buffer and its gradients
  live there; client data stay in host memory and each batch moves to the model's device
  when it enters the model (:func:`forward`). Updates, aggregation, secure sums and
  privacy accounting work on host tensors, so every part after the client's step is the
  same code on any device.
* ``model.dtype``: ``float32``, or ``bfloat16`` mixed precision (Micikevicius et al. 2018,
  "Mixed Precision Training", §3): the frozen weights are stored in bfloat16 (half the
  memory), the trainable ones stay float32 master weights (the flat buffer, so optimiser
  steps, updates and aggregation keep full precision), and every forward pass runs under
  ``torch.autocast`` in bfloat16. Updates therefore travel in the trainable parameters'
  dtype, float32.
"""

from __future__ import annotations

import contextlib

import torch

from fedgpt.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
AUTOCAST = "fedgpt_autocast"  # attribute of a model whose forward runs under autocast


def resolve_device(spec: str) -> torch.device:
    """The torch device ``runtime.device`` names; a ConfigError when it is not there."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"runtime.device '{spec}': this machine has no CUDA device (torch "
                f"{torch.__version__}); use 'cpu' or 'auto'"
            )
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"runtime.device '{spec}': only {torch.cuda.device_count()} CUDA device(s)"
            )
    return dev


def place(model: torch.nn.Module, dtype: str, device: torch.device) -> torch.nn.Module:
    """Store ``model``'s frozen weights in ``dtype`` (trainable ones stay float32), move it
    to ``device`` and mark it for autocast when ``dtype`` is not float32. In place."""
    low = DTYPES[dtype]
    if low != torch.float32:
        with torch.no_grad():
            for p in model.parameters():
                if not p.requires_grad and p.is_floating_point():
                    p.data = p.data.to(low)
        setattr(model, AUTOCAST, low)
    return model.to(device)


def marked(model: torch.nn.Module, name: str):
    """An attribute FedGPT set on ``model`` (or on the model a per-sample-gradient wrapper
    holds as ``_module``), else None."""
    value = getattr(model, name, None)
    return value if value is not None else getattr(getattr(model, "_module", None), name, None)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def precision(model: torch.nn.Module):
    """The autocast context of ``model``'s forward passes (a no-op for float32)."""
    low = marked(model, AUTOCAST)
    if low is None:
        return contextlib.nullcontext()
    return torch.autocast(model_device(model).type, dtype=low)


def forward(model: torch.nn.Module, **inputs):
    """``model(**inputs)`` with the tensors moved to the model's device, under its
    precision."""
    dev = model_device(model)
    moved = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    with precision(model):
        return model(**moved)
