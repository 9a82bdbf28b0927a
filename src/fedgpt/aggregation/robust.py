"""Robust aggregation rules against poisoned updates (each over stacked deltas (K, P)).

* Coordinate-wise median and β-trimmed mean (Yin et al. 2018, "Byzantine-Robust
  Distributed Learning: Towards Optimal Statistical Rates", Definitions 1-2): per
  coordinate, the median, or the mean after dropping the ⌊βK⌋ largest and smallest values.
* Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", Sec. 4): score(i) = Σ of the squared distances from
  Δ_i to its K − f − 2 nearest other updates; Krum picks the lowest score, Multi-Krum
  averages the m lowest (weighted by n_k).
* Norm bounding (Sun et al. 2019, "Can You Really Backdoor Federated Learning?", Sec. 4):
  each update scaled to L2 norm at most M, then the n_k-weighted mean.
* Bucketing (Karimireddy, He & Jaggi 2022, "Byzantine-Robust Learning on Heterogeneous
  Datasets via Bucketing", Algorithm 1): a seeded random permutation splits the K updates
  into ⌈K/s⌉ buckets of s, each bucket is replaced by its mean, and the robust rule runs
  on the bucket means — less heterogeneity among its inputs, at the cost of each bad
  update contaminating one bucket.

All are single tensor operations over the stack (sorts, a pairwise distance matrix), no
loops over parameters.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedgpt.aggregation.base import AGGREGATORS, Aggregate, Aggregator, AggregatorConfig, Updates
from fedgpt.aggregation.fedavg import weighted_average
from fedgpt.errors import FedGPTError


def coordinate_median(deltas: torch.Tensor) -> torch.Tensor:
    """Per-coordinate median (mean of the two middle values when K is even)."""
    s = deltas.sort(dim=0).values
    k = s.shape[0]
    return s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) / 2


def trimmed_mean(deltas: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-coordinate mean after dropping the ⌊βK⌋ smallest and largest values."""
    k = deltas.shape[0]
    b = int(beta * k)
    if 2 * b >= k:
        raise FedGPTError(f"trim fraction {beta} leaves no update of {k}")
    return deltas.sort(dim=0).values[b : k - b].mean(0)


def krum_scores(deltas: torch.Tensor, f: int) -> torch.Tensor:
    """score(i) = Σ squared distances to the K − f − 2 nearest other updates."""
    k = deltas.shape[0]
    near = k - f - 2
    if near < 1:
        raise FedGPTError(f"Krum needs K > f + 2 updates, got K = {k}, f = {f}")
    d2 = torch.cdist(deltas.double(), deltas.double()).pow(2)
    d2.fill_diagonal_(float("inf"))
    return d2.sort(dim=1).values[:, :near].sum(1)


def multi_krum(
    deltas: torch.Tensor, weights: torch.Tensor, f: int, m: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted mean of the m updates with the lowest Krum scores, their indices);
    m = 1 is Krum."""
    chosen = krum_scores(deltas, f).argsort()[:m]
    return weighted_average(deltas[chosen], weights[chosen]), chosen


def norm_bounded_mean(deltas: torch.Tensor, weights: torch.Tensor, bound: float):
    """n_k-weighted mean of the updates scaled to L2 norm at most ``bound``."""
    norms = deltas.norm(dim=1, keepdim=True)
    return weighted_average(deltas * torch.clamp(bound / (norms + 1e-12), max=1.0), weights)


def bucket_means(
    deltas: torch.Tensor, weights: torch.Tensor, s: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_k-weighted means of ⌈K/s⌉ random buckets of s updates, each bucket's Σ n_k):
    Karimireddy et al. 2022, Algorithm 1, lines 2–3. One scatter, no loop."""
    k = deltas.shape[0]
    perm = torch.randperm(k, generator=gen)
    bucket = torch.empty(k, dtype=torch.long)
    bucket[perm] = torch.arange(k) // s
    nb = int(bucket.max()) + 1
    w = weights.to(torch.float64)
    sums = torch.zeros(nb, deltas.shape[1], dtype=torch.float64)
    sums.index_add_(0, bucket, deltas.double() * w[:, None])
    wsum = torch.zeros(nb, dtype=torch.float64).index_add_(0, bucket, w)
    return (sums / wsum[:, None]).to(deltas.dtype), wsum


class _Robust(Aggregator):
    """A rule over the stacked individual updates, after optional bucketing."""

    class Config(AggregatorConfig):
        bucket: int = Field(
            1, ge=1, description="average random buckets of this many updates first "
            "(bucketing, Karimireddy et al. 2022); 1 = off",
        )  # fmt: skip

    def aggregate(self, state, updates: Updates, gen: torch.Generator) -> Aggregate:
        deltas, weights = updates.deltas, updates.weights
        if self.cfg.bucket > 1:
            deltas, weights = bucket_means(deltas, weights, self.cfg.bucket, gen)
        return Aggregate(self.rule(deltas, weights), state)

    def rule(self, deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@AGGREGATORS.register("median")
class Median(_Robust):
    def rule(self, deltas, weights):
        return coordinate_median(deltas)


@AGGREGATORS.register("trimmed_mean")
class TrimmedMean(_Robust):
    class Config(_Robust.Config):
        trim: float = Field(
            0.1, ge=0.0, lt=0.5, description="share dropped at each end per coordinate (beta)"
        )

    def rule(self, deltas, weights):
        return trimmed_mean(deltas, self.cfg.trim)


@AGGREGATORS.register("krum")
class Krum(_Robust):
    class Config(_Robust.Config):
        f: int = Field(1, ge=0, description="tolerated attackers f")

    def rule(self, deltas, weights):
        return multi_krum(deltas, weights, self.cfg.f, 1)[0]


@AGGREGATORS.register("multi_krum")
class MultiKrum(_Robust):
    class Config(_Robust.Config):
        f: int = Field(1, ge=0, description="tolerated attackers f")
        m: int = Field(3, ge=1, description="updates averaged")

    def rule(self, deltas, weights):
        return multi_krum(deltas, weights, self.cfg.f, min(self.cfg.m, deltas.shape[0]))[0]


@AGGREGATORS.register("norm_bound")
class NormBound(_Robust):
    class Config(_Robust.Config):
        bound: float = Field(1.0, gt=0.0, description="L2 bound M per update")

    def rule(self, deltas, weights):
        return norm_bounded_mean(deltas, weights, self.cfg.bound)
