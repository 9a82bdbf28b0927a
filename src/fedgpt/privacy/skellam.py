"""Distributed DP under SecAgg with the multi-dimensional Skellam mechanism (Agarwal,
Kairouz & Liu 2021, "The Skellam Mechanism for Differentially Private Federated
Learning", Algorithm 1), with the random rotation and conditional randomized rounding of
Kairouz, Liu & Steinke 2021 ("The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", §4, Algorithm 1 steps 1–4).

Each client k, before masking, turns its update Δ_k ∈ R^P into an integer vector:

1. clip: x = Δ_k · min(1, c/‖Δ_k‖₂)  (c = ``privacy.clip_norm``);
2. rotate (flatten): x' = H D x / √d, with x zero-padded to d = 2^⌈log2 P⌉, H the d×d
   Walsh–Hadamard matrix and D a diagonal of random signs shared by all clients of the
   round (public randomness: it spreads the norm over the coordinates, it hides nothing);
3. scale and round: r = ⌊s·x'⌉ by randomized rounding (each coordinate up with
   probability equal to its fractional part), repeated until ‖r‖₂ ≤ Δ₂ (conditional
   rounding, Kairouz et al. 2021 Theorem 1 / Proposition 22 with β = e^{-1/2}):

       Δ₂² = min((s c + √d)², s²c² + d/4 + √(2 ln(1/β))·(s c + √d/2));

4. noise: r + Sk(μ/t) coordinate-wise — Sk(λ) = Poisson(λ/2) − Poisson(λ/2) has variance
   λ — with μ = (s·z·c)² the central variance and t the fewest clients whose inputs the
   SecAgg threshold lets the server unmask (each client refuses a smaller survivor set),
   so the *sum* carries Sk(μ·|U3|/t) ⊇ Sk(μ) (Skellam is closed under summation);
5. the integers go into Z_{2^64} (two's complement) with one more word, 1, that counts
   the summands.

The server unmasks Σ_k r_k + noise mod 2^64 — read as signed, it is the exact integer sum,
since with s = 2^24 / c every term stays far below 2^62 (modular clipping cannot occur;
:func:`check_sum` fails a round whose sum no honest set of encodings gives) — divides by
s, rotates back (x = D H x' / √d) and divides by the expected cohort m: the same
estimator as central DP's (McMahan et al. 2018, f̃_f).

Rounding and noise are drawn from a Philox generator keyed with 128 bits from the OS for
each encoding (the server sees neither) — keyed with the client's round seed only with
``privacy.reproducible_noise`` (tests, exact reruns: then whoever knows the seed can
remove the noise); the signs D come from the round's public seed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

SCALE_BITS = 24  # s = 2^24 / c: the clipped norm c maps to 2^24 integer units
BETA = math.exp(-0.5)  # conditional rounding's β (Kairouz et al. 2021, Prop. 22)
SIGMAS = 50.0  # check_sum: a coordinate beyond this many noise std-devs is no encoding


def min_summands(per_round: int, privacy) -> int:
    """The fewest clients whose inputs a SecAgg round of ``per_round`` can unmask: t + 1,
    with t the smallest threshold a client accepts for its neighbours (SecAgg+ graph of
    ``privacy.secagg_neighbours``, or everyone) at ``privacy.secagg_threshold``."""
    from fedgpt.privacy.secagg.client import min_threshold

    k, others = privacy.secagg_neighbours, per_round - 1
    degree = others if k <= 0 or k >= others else min(others, 2 * max(1, k // 2))
    return min(per_round, min_threshold(degree, privacy.secagg_threshold) + 1)


def padded(numel: int) -> int:
    """d: the next power of two ≥ ``numel`` (the Hadamard transform's size)."""
    return 1 << max(0, math.ceil(math.log2(max(numel, 1))))


def rounded_bound(scaled_clip: float, dim: int, beta: float = BETA) -> float:
    """Δ₂: the L2 norm conditional rounding guarantees for a vector of norm
    ``scaled_clip`` in ``dim`` coordinates (Kairouz et al. 2021, Theorem 1)."""
    c, d = scaled_clip, dim
    first = c + math.sqrt(d)
    if beta <= 0:
        return first
    second = c * c + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2)
    return min(first, math.sqrt(second))


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """H x for x of length 2^k (unnormalised Walsh–Hadamard, log2 d vectorised passes)."""
    d, h, y = x.numel(), 1, x
    while h < d:
        y = y.view(d // (2 * h), 2, h)
        y = torch.stack((y[:, 0] + y[:, 1], y[:, 0] - y[:, 1]), dim=1)
        h *= 2
    return y.reshape(d)


def signs(dim: int, seed: int) -> torch.Tensor:
    """D: ``dim`` random ±1 (float64) from the round's public ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (dim,), generator=gen, dtype=torch.float64) * 2 - 1


def rotate(x: torch.Tensor, seed: int) -> torch.Tensor:
    """H D x / √d (x float64 of length d = 2^k)."""
    return hadamard(x * signs(x.numel(), seed)) / math.sqrt(x.numel())


def unrotate(y: torch.Tensor, seed: int) -> torch.Tensor:
    """D H y / √d: the inverse of :func:`rotate` (H is symmetric, H H = d I)."""
    return hadamard(y) * signs(y.numel(), seed) / math.sqrt(y.numel())


def os_generator() -> np.random.Generator:
    """A Philox generator keyed with 128 bits from the OS CSPRNG."""
    return np.random.Generator(np.random.Philox(key=int.from_bytes(os.urandom(16), "little")))


def conditional_round(v: np.ndarray, bound: float, rng, tries: int = 1000) -> np.ndarray:
    """Randomized rounding of ``v`` repeated until the L2 norm is ≤ ``bound``."""
    low = np.floor(v)
    frac = v - low
    for _ in range(tries):
        r = low + (rng.random(v.shape) < frac)
        if float(np.dot(r, r)) <= bound * bound:
            return r.astype(np.int64)
    raise RuntimeError(f"conditional rounding found no vector within norm {bound:.6g}")


def skellam(n: int, variance: float, rng) -> np.ndarray:
    """``n`` draws of Sk(variance) = Poisson(variance/2) − Poisson(variance/2) (int64)."""
    lam = variance / 2
    return rng.poisson(lam, n).astype(np.int64) - rng.poisson(lam, n).astype(np.int64)


@dataclass(frozen=True)
class SkellamCodec:
    """The distributed-DP encoding of one run: clip norm c, noise multiplier z (of the sum:
    std z·c), the fewest summands ``min_sum`` the noise is sized for, the expected cohort
    m the server divides by."""

    clip: float
    noise_multiplier: float
    min_sum: int
    expected: int
    reproducible: bool = False  # privacy.reproducible_noise: rounding and noise seeded

    @property
    def scale(self) -> float:
        return 2.0**SCALE_BITS / self.clip

    @property
    def central_variance(self) -> float:
        """μ = (s·z·c)²: the variance of the sum's noise (scaled units) at ``min_sum``."""
        return (self.scale * self.noise_multiplier * self.clip) ** 2

    def words(self, numel: int) -> int:
        return padded(numel) + 1

    def bound(self, numel: int) -> float:
        """Δ₂ of one client's rounded vector (scaled units)."""
        return rounded_bound(self.scale * self.clip, padded(numel))

    def encode(self, delta: torch.Tensor, rotation_seed: int, seed: int = 0) -> np.ndarray:
        """The client's Z_{2^64} words: steps 1–5 of the module docstring (``seed``: the
        client's round seed, used only when ``reproducible``)."""
        rng = np.random.Generator(np.random.Philox(key=seed)) if self.reproducible else (
            os_generator())  # fmt: skip
        x = delta.detach().double().flatten()
        x = x * min(1.0, self.clip / (float(x.norm()) + 1e-12))
        d = padded(x.numel())
        x = torch.cat([x, torch.zeros(d - x.numel(), dtype=torch.float64)])
        v = (rotate(x, rotation_seed) * self.scale).numpy()
        r = conditional_round(v, self.bound(delta.numel()), rng)
        r = r + skellam(d, self.central_variance / self.min_sum, rng)
        return np.concatenate([r, [1]]).astype(np.int64).view(np.uint64)

    def check_sum(self, total: np.ndarray, count: int, numel: int) -> str | None:
        """Why ``total`` cannot be the sum of ``count`` honest encodings, or None: the count
        word must be ``count`` and every coordinate within count·Δ₂ plus ``SIGMAS`` noise
        std-devs (a false share or a masked input that is no encoding gives values spread
        over the whole ring)."""
        signed = total.view(np.int64)
        if int(signed[-1]) != count:
            return (
                f"secagg: the unmasked sum counts {int(signed[-1])} encodings, not {count}: a "
                "client sent a masked input that is no encoding, or a share was false"
            )
        std = math.sqrt(self.central_variance * count / self.min_sum)
        limit = count * self.bound(numel) + SIGMAS * std
        over = int(np.count_nonzero(np.abs(signed[:-1].astype(np.float64)) > limit))
        if over:
            return (
                f"secagg: {over} of {signed.size - 1} values of the unmasked sum are outside "
                f"what {count} encodings give: a masked input is no encoding, or a share was "
                "false; not applied"
            )
        return None

    def decode(self, total: np.ndarray, numel: int, rotation_seed: int) -> torch.Tensor:
        """Σ_k clip(Δ_k) + noise, in the model's units (``numel`` values, float32)."""
        y = torch.from_numpy(total[:-1].view(np.int64).astype(np.float64)) / self.scale
        return unrotate(y, rotation_seed)[:numel].float()
