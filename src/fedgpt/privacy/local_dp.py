"""Local DP: the client clips its update and adds Gaussian noise before it leaves.

The released update clip(Δ_k, S) + N(0, (z·S)²·I) is a Gaussian mechanism on the client's
whole data set. Any two data sets of the client give clipped updates at most 2S apart,
so one release has noise multiplier z/2 with respect to that L2 sensitivity; a client that
takes part in c rounds composes c such releases (no subsampling amplification: the client
knows when it releases). Its ε is computed by the same accountant as central DP
(``Accountant`` with sample rate 1).
"""

from __future__ import annotations

import torch

from fedgpt.privacy.mechanisms import clip_rows, gaussian_noise


def privatize(
    delta: torch.Tensor, clip: float, noise_multiplier: float, gen: torch.Generator | None
) -> torch.Tensor:
    """clip(Δ, S) + N(0, (z S)²·I)."""
    clipped, _ = clip_rows(delta.unsqueeze(0), clip)
    return clipped[0] + gaussian_noise(delta.numel(), noise_multiplier * clip, gen)


def local_noise_multiplier(z: float) -> float:
    """The per-release noise multiplier w.r.t. replace-one-dataset sensitivity 2S."""
    return z / 2
