"""Client steps for heterogeneous devices (:class:`~fedgpt.client.algorithm.ClientStep`).

:class:`TierSlice`: a client on a device tier trains only its slice of the model and sends
only that slice (gradient masking; HeteroFL, Diao et al. 2021, and for LoRA ranks HetLoRA's
zero-padding, Cho et al. 2024: rank components ≥ r are zero on a rank-r client, so their
gradients are exactly zero). The server averages each parameter over the clients that hold
it (:mod:`fedgpt.aggregation.mean`, coverage averaging).
"""

from __future__ import annotations

import dataclasses

import torch

from fedgpt.client.algorithm import ClientRound, ClientStep
from fedgpt.client.trainer import Update


class TierSlice(ClientStep):
    """``tiers``: client -> (tier name, trainable per parameter, flat mask of the slice),
    for the clients not on the full model."""

    name = "tiers"

    def __init__(self, tiers: dict):
        self.tiers = tiers

    def weights(self, ctx: ClientRound, weights: torch.Tensor) -> torch.Tensor:
        tier = self.tiers.get(ctx.client_id)
        if tier and tier[0].startswith("lora:"):  # HetLoRA: rank components >= r are zero
            return torch.where(tier[2], weights, torch.zeros((), dtype=weights.dtype))
        return weights

    def trainable(self, ctx: ClientRound) -> torch.Tensor | None:
        tier = self.tiers.get(ctx.client_id)
        return tier[1] if tier else None

    def after(self, ctx: ClientRound, update: Update) -> Update:
        tier = self.tiers.get(ctx.client_id)
        if not tier:
            return update
        return dataclasses.replace(  # only the trained slice travels
            update, delta=update.delta[tier[2]], extra={**update.extra, "tier": tier[0]}
        )
