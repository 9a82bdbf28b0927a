"""Hybrid aggregation: the federated average nudged by a few server steps on public data.

As the design writes it: w_{t+1} = Σ_k (n_k/n) w_t^{(k)} + λ·Δ_public, where Δ_public is
the change made by ``hybrid_steps`` optimiser steps on the public text (plays no client
holds) starting at the average. With ``server_optimizer = "fedavg"`` and ``server_lr = 1``
the average is exactly Σ_k (n_k/n) w_t^{(k)}; with another server optimiser the public
steps start from its output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedgpt.client.trainer import make_optimizer, train_steps
from fedgpt.config import RunConfig
from fedgpt.models.params import FlatModel
from fedgpt.seeding import client_seed


def public_step(
    fm: FlatModel, public: torch.Tensor, cfg: RunConfig
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """A function (w_avg, round) -> w_avg + λ (w_public − w_avg)."""
    lam, steps = cfg.federation.hybrid_lambda, cfg.federation.hybrid_steps

    def step(w_avg: torch.Tensor, rnd: int) -> torch.Tensor:
        fm.load(w_avg)
        opt = make_optimizer(fm, cfg.client)
        gen = torch.Generator().manual_seed(client_seed(cfg.seed, rnd, "__public__"))
        train_steps(fm, opt, public, cfg.client, steps, gen)
        return w_avg + lam * fm.delta(w_avg)

    return step
