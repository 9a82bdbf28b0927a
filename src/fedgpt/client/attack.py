"""A poisoning simulator for tests and benchmarks: a seeded fraction of clients corrupt
what they send — sign flip (−s·Δ), scaling (s·Δ) or Gaussian noise with std s."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def malicious_clients(client_ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """⌊fraction·N⌋ clients drawn with a generator keyed by the run seed."""
    k = int(fraction * len(client_ids))
    rng = np.random.default_rng([seed, 0xBAD])
    return {client_ids[i] for i in rng.choice(len(client_ids), size=k, replace=False)}


def poison(delta: torch.Tensor, kind: str, scale: float, gen: torch.Generator) -> torch.Tensor:
    if kind == "sign_flip":
        return -scale * delta
    if kind == "scale":
        return scale * delta
    if kind == "noise":
        return torch.randn(delta.shape, generator=gen) * scale
    raise ValueError(f"unknown attack {kind!r}")
