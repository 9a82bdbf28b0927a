"""Client-level central DP: DP-FedAvg with fixed or adaptive clipping.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models", Algorithm 1 with the fixed-denominator estimator f̃_f): each client update is
clipped to L2 norm S, the clipped updates are summed, Gaussian noise N(0, (z·S)²·I) is
added to the sum, and the result is divided by the *expected* number of participants m
(not the number that reported, which would leak it):

    Δ̃ = (Σ_k clip(Δ_k, S) + N(0, z²S²I)) / m.

Clients weigh equally (a data-dependent weight n_k would raise the sensitivity).

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping", Algorithm 1 and Theorem 1): with b_k = 1[‖Δ_k‖ ≤ C] the indicator that client
k was *not* clipped, the server releases b̃ = (Σ_k b_k + N(0, σ_b²)) / m and updates

    C ← C · exp(−η_C (b̃ − γ)),

so C moves to the γ-quantile of update norms (more unclipped updates than γ → C
shrinks). Privacy budget split: to keep the overall noise multiplier z, the updates get
z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) (Theorem 1); σ_b defaults to m/20 as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedgpt.errors import ConfigError
from fedgpt.privacy.mechanisms import clip_rows, gaussian_noise


def update_noise_multiplier(z: float, count_std: float) -> float:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): the updates' share of an overall multiplier z."""
    if z <= 0:
        return 0.0
    if z >= 2 * count_std:
        raise ConfigError(
            f"privacy.noise_multiplier ({z:.4g}) must be < 2 x privacy.count_noise_std "
            f"({count_std:.4g}) for adaptive clipping; raise count_noise_std"
        )
    return (z**-2 - (2 * count_std) ** -2) ** -0.5


def adaptive_clip_step(clip: float, unclipped_fraction: float, quantile: float, lr: float):
    """C · exp(−η (b̃ − γ)) (geometric update of Andrew et al. 2021)."""
    return clip * math.exp(-lr * (unclipped_fraction - quantile))


@dataclass
class CentralDP:
    """The DP-FedAvg aggregator. Mutable state: the current clip norm (adaptive)."""

    clip: float
    noise_multiplier: float
    expected_clients: int
    adaptive: bool = False
    quantile: float = 0.5
    clip_lr: float = 0.2
    count_std: float | None = None

    def __post_init__(self) -> None:
        if self.count_std is None:
            self.count_std = self.expected_clients / 20
        self.z_updates = (
            update_noise_multiplier(self.noise_multiplier, self.count_std)
            if self.adaptive
            else self.noise_multiplier
        )

    def aggregate(
        self, deltas: torch.Tensor, weights: torch.Tensor, gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Δ̃ for the stacked client deltas (K, P); ``weights`` are ignored (equal weights)."""
        clipped, norms = clip_rows(deltas, self.clip)
        return self.release(clipped.sum(0), norms, gen)

    def scale(self, norm: float) -> float:
        """min(1, S / ‖Δ‖): the factor clipping scales one update by (as :func:`clip_rows`)."""
        return float(torch.clamp(self.clip / (torch.tensor(norm) + 1e-12), max=1.0))

    def release(
        self, clipped_sum: torch.Tensor, norms: torch.Tensor, gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Δ̃ from the sum of the clipped updates and their original norms (the streaming
        server folds each clipped update as it arrives and calls this once)."""
        clip = self.clip
        total = clipped_sum + gaussian_noise(clipped_sum.numel(), self.z_updates * clip, gen)
        avg = total / self.expected_clients
        info = {"clip_norm": clip, "clipped": int((norms > clip).sum())}
        if self.adaptive:
            unclipped = float((norms <= clip).sum())
            noisy = unclipped
            if self.noise_multiplier > 0:
                noisy += float(gaussian_noise(1, self.count_std, gen)[0])
            frac = noisy / self.expected_clients
            self.clip = adaptive_clip_step(clip, frac, self.quantile, self.clip_lr)
            info["unclipped_fraction_noisy"] = frac
        return avg, info
