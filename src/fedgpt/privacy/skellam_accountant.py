"""The accountant of distributed DP with the Skellam mechanism (:mod:`fedgpt.privacy.skellam`),
for the mechanism as run: discretisation (the rounded sensitivity), the noise of the fewest
survivors, Poisson subsampling of clients, composition over rounds.

* RDP of the multi-dimensional Skellam mechanism (Agarwal, Kairouz & Liu 2021, Theorem 3.5):
  with noise Sk(μ) per coordinate and sensitivities Δ₁, Δ₂ in integer units,

      ε(α) = α Δ₂² / (2μ) + min( ((2α − 1) Δ₂² + 6 Δ₁) / (4 μ²),  3 Δ₁ / (2μ) ).

  Δ₂ is the conditional-rounding bound (:func:`fedgpt.privacy.skellam.rounded_bound`) and
  Δ₁ ≤ min(√d Δ₂, Δ₂²) (integer coordinates). The noise of the sum is at least Sk(μ) since
  at least ``min_sum`` clients each add Sk(μ/min_sum); modular wrap-around is
  post-processing of the noisy sum, so it costs accuracy (and :func:`check_sum` rules it out
  here), never privacy.
* Poisson subsampling with rate q (Zhu & Wang 2019, "Poisson Subsampled Rényi Differential
  Privacy", Theorem 5, general upper bound for integer α ≥ 2):

      ε_q(α) ≤ 1/(α−1) · log( (1−q)^{α−1}(1 + (α−1)q) + C(α,2) q² (1−q)^{α−2} e^{ε(2)}
                               + 3 Σ_{l=3}^{α} C(α,l) q^l (1−q)^{α−l} e^{(l−1) ε(l)} ),

  and never more than the unsampled ε(α).
* T rounds compose additively in RDP; RDP → (ε, δ) with dp-accounting's conversion (Balle
  et al. 2020, Theorem 21).

Clients take part under fixed-size sampling of m of N; as for central DP it is accounted as
Poisson sampling with q = m/N.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln, logsumexp

from fedgpt.errors import ConfigError
from fedgpt.privacy.skellam import padded, rounded_bound

ORDERS = np.array([*range(2, 129), 256])
# without subsampling the bound holds at every real order (Theorem 5 needs integers)
ALL_ORDERS = np.concatenate([np.arange(11, 110) / 10, np.arange(11, 64), [128, 256, 512]])
MAX_DIM = 2**30  # the run's ε holds for every model of up to 2^30 trainable values (ε grows
# with d only through the rounding bound: by a relative 1e-6 at d = 2^30, s = 2^24)


def skellam_rdp(alpha: np.ndarray, l1: float, l2: float, mu: float) -> np.ndarray:
    """ε(α) of the Skellam mechanism with variance ``mu`` (Agarwal et al. 2021, Thm 3.5)."""
    a = np.asarray(alpha, dtype=np.float64)
    extra = np.minimum(((2 * a - 1) * l2 * l2 + 6 * l1) / (4 * mu * mu), 3 * l1 / (2 * mu))
    return a * l2 * l2 / (2 * mu) + extra


def subsampled_rdp(alpha: int, q: float, rdp) -> float:
    """Zhu & Wang 2019, Theorem 5: RDP at integer order ``alpha`` of the mechanism with RDP
    curve ``rdp`` (vectorised over orders) run on a Poisson sample of rate ``q``."""
    if q >= 1:
        return float(rdp(np.array([alpha]))[0])
    a, lq, l1q = alpha, math.log(q), math.log1p(-q)
    terms = [(a - 1) * l1q + math.log1p((a - 1) * q)]
    terms.append(math.log(a * (a - 1) / 2) + 2 * lq + (a - 2) * l1q + float(rdp([2])[0]))
    if a >= 3:
        ls = np.arange(3, a + 1)
        comb = gammaln(a + 1) - gammaln(ls + 1) - gammaln(a - ls + 1)
        terms.extend(math.log(3) + comb + ls * lq + (a - ls) * l1q + (ls - 1) * rdp(ls))
    bound = float(logsumexp(terms)) / (a - 1)
    return min(bound, float(rdp(np.array([a]))[0]))


def rdp_curve(clip: float, noise_multiplier: float, dim: int, scale: float):
    """The per-round Skellam RDP curve for clip c, multiplier z and ``dim`` model values."""
    d = padded(dim)
    l2 = rounded_bound(scale * clip, d)
    l1 = min(math.sqrt(d) * l2, l2 * l2)
    mu = (scale * noise_multiplier * clip) ** 2
    return lambda alpha: skellam_rdp(alpha, l1, l2, mu)


def epsilon(
    noise_multiplier: float, sample_rate: float, rounds: int, delta: float, *, clip: float,
    dim: int, scale: float,
) -> float:  # fmt: skip
    """ε after ``rounds`` subsampled Skellam rounds (module docstring)."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    if not noise_multiplier > 0:
        raise ConfigError(f"distributed DP needs a noise multiplier > 0, got {noise_multiplier}")
    if rounds == 0:
        return 0.0
    curve = rdp_curve(clip, noise_multiplier, dim, scale)
    if sample_rate >= 1:
        return float(compute_epsilon(ALL_ORDERS, curve(ALL_ORDERS) * rounds, delta)[0])
    rdp = np.array([subsampled_rdp(int(a), sample_rate, curve) for a in ORDERS]) * rounds
    return float(compute_epsilon(ORDERS, rdp, delta)[0])


def plan_noise(
    target_epsilon: float, sample_rate: float, rounds: int, delta: float, tol: float = 1e-4,
    **shape,
) -> float:  # fmt: skip
    """The smallest noise multiplier whose ε after ``rounds`` is ≤ ``target_epsilon``."""
    if not target_epsilon > 0:
        raise ConfigError(f"target epsilon must be > 0, got {target_epsilon}")
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1 to plan noise for, got {rounds}")
    lo, hi = 0.0, 1.0
    while epsilon(hi, sample_rate, rounds, delta, **shape) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ConfigError(f"no noise multiplier reaches epsilon {target_epsilon}")
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        if mid > 0 and epsilon(mid, sample_rate, rounds, delta, **shape) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi
