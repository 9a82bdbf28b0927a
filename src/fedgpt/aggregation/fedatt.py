"""Attentive aggregation, FedAtt (Ji et al. 2019, "Learning Private Neural Language
Modeling with Attentive Aggregation", Sec. 3, eqs. 2-4): for every layer l (here every
parameter tensor) the server weighs client k by

    s_k^l = ‖w^l − w_k^l‖_2,   α_k^l = softmax_k(s_k^l),

and steps w^l ← w^l − ε Σ_k α_k^l (w^l − w_k^l) = w^l + ε Σ_k α_k^l Δ_k^l.

Vectorised: per-(client, layer) norms by one ``index_add`` over the flat deltas with each
element's layer id, one softmax over clients, one gather back to elements.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedgpt.aggregation.base import AGGREGATORS, Aggregate, Aggregator, AggregatorConfig, Updates
from fedgpt.models.params import ParamSpec


def layer_ids(spec: ParamSpec) -> torch.Tensor:
    """For each element of the flat vector, the index of its parameter tensor."""
    sizes = torch.tensor([int(torch.tensor(s).prod()) if s else 1 for s in spec.shapes])
    return torch.arange(len(spec.names)).repeat_interleave(sizes)


def fedatt_weights(deltas: torch.Tensor, ids: torch.Tensor, n_layers: int) -> torch.Tensor:
    """α (K, L): softmax over clients of each layer's distance ‖Δ_k^l‖."""
    sq = torch.zeros(deltas.shape[0], n_layers, dtype=torch.float64)
    sq.index_add_(1, ids, deltas.double() ** 2)
    return torch.softmax(sq.sqrt(), dim=0)


def fedatt(deltas: torch.Tensor, ids: torch.Tensor, n_layers: int, step: float):
    """(ε Σ_k α_k^l Δ_k^l as a flat delta, α (K, L))."""
    alpha = fedatt_weights(deltas, ids, n_layers)
    return step * (alpha[:, ids].to(deltas.dtype) * deltas).sum(0), alpha


@AGGREGATORS.register("fedatt")
class FedAtt(Aggregator):
    """Layer-wise attention; reports each client's mean α over layers."""

    class Config(AggregatorConfig):
        step: float = Field(1.0, gt=0.0, description="server step size epsilon (Ji et al. 2019)")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.ids = layer_ids(ctx.fm.spec)
        self.n_layers = int(self.ids[-1]) + 1

    def aggregate(self, state, updates: Updates, gen: torch.Generator) -> Aggregate:
        delta, alpha = fedatt(updates.deltas, self.ids, self.n_layers, self.cfg.step)
        weights = {c: float(a) for c, a in zip(updates.ids, alpha.mean(1), strict=True)}
        return Aggregate(delta, state, weights)
