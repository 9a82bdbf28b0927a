"""Learned attention fusion: α_k = softmax(MLP(meta_k)), the aggregate Σ_k α_k Δ_k.

The design's attention-weighted fusion, with the weights learnt rather than fixed. The
meta-features are what a server may legitimately see of a client's reply, never its
data:

    meta_k = [log n_k, loss before local training, loss after, log ‖Δ_k‖,
              coverage (share of the model the client trained: its device tier),
              staleness (rounds since the global model it trained from; 0 here)]

standardised per feature over the round's clients. The MLP (one tanh hidden layer)
maps each client's meta to a score; α = softmax over the round's clients.

Objective (documented in docs/aggregation.md): the MLP's parameters θ minimise the
next-token loss of the aggregate on a fixed public validation set V (windows of the
public plays, which no client holds),

    θ ← argmin_θ  L_V(w_t + Σ_k α_k(θ) Δ_k),

by ``attention_steps`` Adam steps per round, warm-started from the previous round's θ
(so θ learns across rounds which kinds of client updates help). The gradient flows
through the language model only to α: ∂L/∂α_k = ⟨∇_w L_V(w̃), Δ_k⟩ at w̃ = w_t + Σ α Δ,
one forward and backward of the model per step, then through softmax and MLP by autograd.
This is a learned counterpart of the fixed-distance FedAtt (Ji et al. 2019) in the spirit
of meta-learned aggregation weights (e.g. "learning to weigh clients" via a validation
objective; cf. Ren et al., "Learning to Reweight Examples", ICML 2018, eq. 3, with
clients in the role of examples).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from fedgpt.aggregation.base import (
    AGGREGATORS,
    Aggregate,
    Aggregator,
    AggregatorConfig,
    ServerContext,
    Updates,
)
from fedgpt.client.trainer import lm_loss
from fedgpt.models.params import FlatModel
from fedgpt.seeding import generator

META = ("log_n", "loss_first", "loss_last", "log_update_norm", "coverage", "staleness")
PREFIX = "attention."


def client_meta(configs: list[dict], coverage: list[float]) -> torch.Tensor:
    """(K, 6) meta-features from the replies' configs (see the module docstring)."""
    rows = []
    for c, cov in zip(configs, coverage, strict=True):
        m = c.get("metrics", {})
        rows.append(
            [
                math.log(max(float(c.get("num_examples", 1)), 1.0)),
                float(m.get("loss_first", m.get("train_loss", 0.0))),
                float(m.get("loss_last", m.get("train_loss", 0.0))),
                math.log(max(float(m.get("update_norm", 1.0)), 1e-12)),
                float(cov),
                float(c.get("staleness", 0.0)),
            ]
        )
    x = torch.tensor(rows, dtype=torch.float32)
    if x.shape[0] < 2:
        return torch.zeros_like(x)
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def init_mlp(hidden: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """θ: a (6 → hidden → 1) MLP; small random first layer, zero last layer (α uniform
    at the start)."""
    d = len(META)
    return {
        PREFIX + "w1": torch.randn(d, hidden, generator=gen) / math.sqrt(d),
        PREFIX + "b1": torch.zeros(hidden),
        PREFIX + "w2": torch.zeros(hidden),
        PREFIX + "b2": torch.zeros(()),
    }


def attention_weights(theta: dict[str, torch.Tensor], meta: torch.Tensor) -> torch.Tensor:
    """α (K,) = softmax_k(MLP(meta_k))."""
    h = torch.tanh(meta @ theta[PREFIX + "w1"] + theta[PREFIX + "b1"])
    return torch.softmax(h @ theta[PREFIX + "w2"] + theta[PREFIX + "b2"], dim=0)


def fit_attention(
    fm: FlatModel,
    theta: dict[str, torch.Tensor],
    meta: torch.Tensor,
    weights: torch.Tensor,
    deltas: torch.Tensor,
    val: torch.Tensor,
    steps: int,
    lr: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[float]]:
    """Train θ on the validation objective; returns (α with the trained θ, θ, losses)."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    model = fm.model
    losses = []
    was_training = model.training
    model.eval()  # no dropout: a deterministic objective
    for _ in range(steps):
        alpha = attention_weights(params, meta)
        fm.load(weights + alpha.detach() @ deltas)
        fm.zero_grad()
        loss = lm_loss(model, val)
        loss.backward()
        losses.append(float(loss.detach()))
        g_alpha = deltas @ fm.grad  # ∂L/∂α_k = <∇_w L, Δ_k>
        opt.zero_grad()
        alpha.backward(g_alpha)
        opt.step()
    model.train(was_training)
    with torch.no_grad():
        alpha = attention_weights(params, meta)
    return alpha, {k: v.detach() for k, v in params.items()}, losses


@AGGREGATORS.register("attention")
class LearnedAttention(Aggregator):
    """α = softmax(MLP(meta)) trained on the public validation objective above; θ is
    the aggregator's state (checkpointed, warm-started each round)."""

    coverage = True

    class Config(AggregatorConfig):
        steps: int = Field(5, ge=1, description="MLP optimiser steps per round on the public set")
        lr: float = Field(0.05, gt=0.0, description="MLP learning rate (Adam)")
        hidden: int = Field(16, ge=1, description="MLP hidden width")
        windows: int = Field(16, ge=1, description="public validation windows (fixed for the run)")

    needs_public = True

    def __init__(self, cfg, ctx: ServerContext):
        super().__init__(cfg, ctx)
        from fedgpt.tasks.windows import sample_windows

        gen = generator(ctx.seed, 0, "__attention_val__")
        self.val = sample_windows(ctx.public, cfg.windows, ctx.seq_len, gen)

    def aggregate(self, state, updates: Updates, gen: torch.Generator) -> Aggregate:
        theta = {k: v for k, v in state.items() if k.startswith(PREFIX)}
        if not theta:
            theta = init_mlp(self.cfg.hidden, generator(self.ctx.seed, 0, "__attention__"))
        meta = client_meta(updates.configs, updates.coverage)
        alpha, theta, _ = fit_attention(
            self.ctx.fm, theta, meta, updates.base, updates.deltas, self.val,
            self.cfg.steps, self.cfg.lr,
        )  # fmt: skip
        weights = {cid: float(a) for cid, a in zip(updates.ids, alpha, strict=True)}
        return Aggregate(alpha.to(updates.deltas.dtype) @ updates.deltas, theta, weights)
