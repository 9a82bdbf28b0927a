"""Privacy accounting for the Poisson-subsampled Gaussian mechanism, with Google's
``dp-accounting`` (RDP or PLD), and the noise planner that inverts it.

* RDP: Mironov 2017, "Rényi Differential Privacy"; subsampled Gaussian: Mironov, Talwar &
  Zhang 2019; RDP → (ε, δ) with the conversion of Balle et al. 2020, "Hypothesis Testing
  Interpretations and Rényi Differential Privacy" (Theorem 21), as dp-accounting does.
* PLD: privacy loss distributions (Koskela et al. 2020; Doroshenko et al. 2022,
  "Connect the Dots"), tighter, slower.

``closed_form_epsilon`` is the rough bound ε ≈ √(2 q² T log(1/δ))/σ + qT/σ² that some
write-ups quote; it is not an accountant and is only printed beside ours for comparison.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

from fedgpt.errors import ConfigError

Kind = Literal["rdp", "pld"]

# dp-accounting logs a warning for every Renyi order it cannot evaluate (it then leaves
# that order out; the minimum over the remaining orders is still a valid bound)
logging.getLogger("absl").setLevel(logging.ERROR)


def _check(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> None:
    if not noise_multiplier > 0:
        raise ConfigError(f"noise multiplier must be > 0, got {noise_multiplier}")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample rate must be in (0, 1], got {sample_rate}")
    if steps < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


def _new(kind: Kind):
    from dp_accounting import pld, rdp

    if kind == "rdp":
        return rdp.RdpAccountant()
    if kind == "pld":
        return pld.PLDAccountant()
    raise ConfigError(f"accountant must be 'rdp' or 'pld', got {kind!r}")


def _event(noise_multiplier: float, sample_rate: float, steps: int):
    import dp_accounting as dpa

    gauss = dpa.GaussianDpEvent(noise_multiplier)
    inner = gauss if sample_rate >= 1 else dpa.PoissonSampledDpEvent(sample_rate, gauss)
    return dpa.SelfComposedDpEvent(inner, steps)


def epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, kind: Kind = "rdp"
) -> float:
    """ε after ``steps`` compositions of the Poisson-subsampled Gaussian mechanism."""
    _check(noise_multiplier, sample_rate, steps, delta)
    if steps == 0:
        return 0.0
    acc = _new(kind)
    acc.compose(_event(noise_multiplier, sample_rate, steps))
    return float(acc.get_epsilon(delta))


def plan_noise(
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    kind: Kind = "rdp",
    tol: float = 1e-4,
) -> float:
    """The smallest noise multiplier whose ε after ``steps`` is at most ``target_epsilon``
    (bisection on z; ε is decreasing in z)."""
    if not target_epsilon > 0:
        raise ConfigError(f"target epsilon must be > 0, got {target_epsilon}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1 to plan noise for, got {steps}")
    _check(1.0, sample_rate, steps, delta)
    lo, hi = 0.0, 1.0
    while epsilon(hi, sample_rate, steps, delta, kind) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ConfigError(f"no noise multiplier reaches epsilon {target_epsilon}")
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        if mid > 0 and epsilon(mid, sample_rate, steps, delta, kind) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def closed_form_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float):
    """√(2 q² T log(1/δ))/σ + qT/σ²: a rough bound for comparison only, not an accountant."""
    q, t, s = sample_rate, steps, noise_multiplier
    return math.sqrt(2 * q * q * t * math.log(1 / delta)) / s + q * t / (s * s)


@dataclass
class Accountant:
    """Running composition of (noise multiplier, sample rate) steps; each round may differ
    (e.g. adaptive clipping changes nothing here, but a planner may change z)."""

    delta: float
    kind: Kind = "rdp"
    history: list[tuple[float, float]] = field(default_factory=list)

    def spend(self, noise_multiplier: float, sample_rate: float) -> None:
        self.history.append((noise_multiplier, sample_rate))

    def epsilon(self, extra: tuple[float, float] | None = None) -> float:
        """ε of the steps so far (plus ``extra``, to ask before spending)."""
        steps = self.history + ([extra] if extra else [])
        if not steps:
            return 0.0
        acc = _new(self.kind)
        # consecutive equal steps compose as one self-composed event (fast)
        run_start = 0
        for i in range(1, len(steps) + 1):
            if i == len(steps) or steps[i] != steps[run_start]:
                z, q = steps[run_start]
                acc.compose(_event(z, q, i - run_start))
                run_start = i
        return float(acc.get_epsilon(self.delta))
