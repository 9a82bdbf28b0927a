"""Clipping and Gaussian noise on whole tensors.

Noise for production comes from the operating system's CSPRNG (``os.urandom``), turned
into normal deviates with the Box–Muller transform on 53-bit uniforms; a seeded
``torch.Generator`` is used only when ``privacy.reproducible_noise`` is set (tests,
exact reruns). Floating-point Gaussian sampling has known side channels (Mironov 2012,
"On Significance of the Least Significant Bits for Differential Privacy"); neither path
here implements the snapping defence.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch


def clip_rows(deltas: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each row of ``deltas`` (K, P) to L2 norm at most ``clip``:
    Δ ← Δ · min(1, S/‖Δ‖). Returns (clipped, original norms)."""
    norms = deltas.norm(dim=1)
    scale = torch.clamp(clip / (norms + 1e-12), max=1.0)
    return deltas * scale[:, None], norms


def secure_normal(n: int, std: float) -> torch.Tensor:
    """``n`` N(0, std²) float32 draws from the OS CSPRNG (Box–Muller)."""
    m = (n + 1) // 2
    raw = np.frombuffer(os.urandom(16 * m), dtype=np.uint64).reshape(2, m)
    u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1)
    r = np.sqrt(-2.0 * np.log(u[0]))
    z = np.concatenate([r * np.cos(2 * math.pi * u[1]), r * np.sin(2 * math.pi * u[1])])
    return torch.from_numpy((z[:n] * std).astype(np.float32))


def secure_uniform(n: int) -> torch.Tensor:
    """``n`` uniform draws in [0, 1) (float64, 53 bits each) from the OS CSPRNG."""
    raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) if n else np.zeros(0, np.uint64)
    return torch.from_numpy((raw >> np.uint64(11)).astype(np.float64) * 2.0**-53)


def gaussian_noise(n: int, std: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """N(0, std²) noise: from ``gen`` when given (reproducible), else from the OS CSPRNG."""
    if std == 0:
        return torch.zeros(n)
    if gen is not None:
        return torch.randn(n, generator=gen) * std
    return secure_normal(n, std)
