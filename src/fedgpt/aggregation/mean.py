"""FedAvg's n_k-weighted mean (McMahan et al. 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data", Alg. 1: w_{t+1} = Σ_k (n_k / n) w_{t+1}^k), and,
with device tiers, its per-coordinate coverage average (Diao et al. 2021, HeteroFL,
eq. 4: each coordinate averaged over the clients that trained it)."""

from __future__ import annotations

import torch

from fedgpt.aggregation.base import AGGREGATORS, Aggregate, Aggregator, Updates
from fedgpt.aggregation.fedavg import coverage_average, weighted_average
from fedgpt.aggregation.stream import RunningSum


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

    def begin(self, state, numel: int, rnd: int) -> RunningSum:
        return RunningSum(numel)

    def fold(self, acc: RunningSum, delta, weight, norm, index=None, tier=None, sign=1):
        if sign > 0:
            acc.fold(delta, weight, index, tier)
        else:
            acc.unfold(delta, weight, index, tier)

    def finish(self, acc: RunningSum, state, gen, masks=None) -> Aggregate:
        return Aggregate(acc.mean(masks), state)
