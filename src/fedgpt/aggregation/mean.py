"""FedAvg's n_k-weighted mean (McMahan et al. 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data", Alg. 1: w_{t+1} = Σ_k (n_k / n) w_{t+1}^k), and,
with device tiers, its per-coordinate coverage average (Diao et al. 2021, HeteroFL,
eq. 4: each coordinate averaged over the clients that trained it)."""

from __future__ import annotations

import torch

from fedgpt.aggregation.base import AGGREGATORS, Aggregate, Aggregator, Updates
from fedgpt.aggregation.fedavg import coverage_average, weighted_average


@AGGREGATORS.register("fedavg")
class FedAvgAggregator(Aggregator):
    """Linear: works on a secure sum (``individual = False``) and can fold updates as they
    arrive (``streaming``)."""

    individual = False
    coverage = True
    streaming = True

    def aggregate(self, state, updates: Updates, gen: torch.Generator) -> Aggregate:
        if updates.masks is not None:
            return Aggregate(coverage_average(updates.deltas, updates.masks, updates.weights))
        return Aggregate(weighted_average(updates.deltas, updates.weights), state)

    @staticmethod
    def fold(acc: tuple[torch.Tensor, float] | None, delta: torch.Tensor, n: float):
        """Running (Σ n_k Δ_k, Σ n_k) in float64: one update at a time."""
        term = delta.double() * n
        return (term, n) if acc is None else (acc[0] + term, acc[1] + n)

    @staticmethod
    def finish(acc: tuple[torch.Tensor, float]) -> torch.Tensor:
        return (acc[0] / acc[1]).to(torch.float32)
