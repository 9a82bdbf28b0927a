"""A poisoning simulator for tests and benchmarks: a seeded fraction of clients corrupt
what they send — sign flip (−s·Δ), scaling (s·Δ) or Gaussian noise with std s."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from fedgpt.client.algorithm import ClientRound, ClientStep
from fedgpt.client.trainer import Update


def malicious_clients(client_ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """⌊fraction·N⌋ clients drawn with a generator keyed by the run seed."""
    k = int(fraction * len(client_ids))
    rng = np.random.default_rng([seed, 0xBAD])
    return {client_ids[i] for i in rng.choice(len(client_ids), size=k, replace=False)}


def poison(delta: torch.Tensor, kind: str, scale: float, gen: torch.Generator) -> torch.Tensor:
    if kind == "sign_flip":
        return -scale * delta
    if kind == "scale":
        return scale * delta
    if kind == "noise":
        return torch.randn(delta.shape, generator=gen) * scale
    raise ValueError(f"unknown attack {kind!r}")


class Poison(ClientStep):
    """Attack simulation as a client step: the chosen clients send a poisoned update
    (noise from a generator keyed by the round's seed, apart from the client's own)."""

    name = "attack"

    def __init__(self, malicious: frozenset[str], kind: str, scale: float):
        self.malicious, self.kind, self.scale = malicious, kind, scale

    def after(self, ctx: ClientRound, update: Update) -> Update:
        if ctx.client_id not in self.malicious:
            return update
        gen = torch.Generator().manual_seed(ctx.seed ^ 0xBAD)
        return dataclasses.replace(update, delta=poison(update.delta, self.kind, self.scale, gen))
