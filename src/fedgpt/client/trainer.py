"""The local trainer: one function from (global weights, client data, config, generator)
to an :class:`Update`.

Local training is mini-batch SGD or AdamW on the client's own tokens, starting from the
global weights w_t, for ``local_steps`` steps (or ``local_epochs`` passes). With FedProx
(Li et al. 2020, "Federated Optimization in Heterogeneous Networks", eq. 2) each client
minimises h_k(w) = F_k(w) + (mu/2)·||w − w_t||², i.e. the gradient gains mu·(w − w_t).
The update is the flat delta Δ_k = w_k − w_t of the trainable parameters (McMahan et al.
2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data",
Algorithm 1). A non-finite loss or delta is reported as a :class:`Failure`, never
returned as an update.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from fedgpt.config import ClientConfig
from fedgpt.messages import Failure
from fedgpt.models.params import FlatModel
from fedgpt.tasks import CausalLM, Task, evaluate_tokens, lm_loss  # noqa: F401  (re-exported)

CAUSAL_LM = CausalLM()


@dataclass(frozen=True)
class ClientData:
    """One client's tokenised text."""

    client_id: str
    train: torch.Tensor
    test: torch.Tensor


@dataclass(frozen=True)
class Update:
    """One client's contribution to a round."""

    client_id: str
    round: int
    delta: torch.Tensor
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # reply settings a client step adds ("tier")
    payload: dict | None = None  # the tensors that carry ``delta`` when compressed


class NonFiniteLoss(RuntimeError):
    """Raised by :func:`train_steps` when the loss stops being finite."""


def make_optimizer(
    fm: FlatModel, cfg: ClientConfig, trainable: torch.Tensor | None = None
) -> torch.optim.Optimizer:
    """The local optimiser over all trainable parameters, or over those flagged in
    ``trainable`` (one bool per parameter: a device tier's slice)."""
    params = fm.params()
    if trainable is not None:
        params = [p for p, keep in zip(params, trainable.tolist(), strict=True) if keep]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def num_local_steps(epoch_batches: float, cfg: ClientConfig) -> int:
    """``local_steps``, or the steps of ``local_epochs`` passes over data that one pass
    covers in ``epoch_batches`` batches (:meth:`fedgpt.tasks.base.Task.epoch_batches`)."""
    if cfg.local_epochs > 0:
        return max(1, math.ceil(cfg.local_epochs * epoch_batches))
    return cfg.local_steps


def train_steps(
    fm: FlatModel,
    opt: torch.optim.Optimizer,
    tokens: torch.Tensor,
    cfg: ClientConfig,
    steps: int,
    gen: torch.Generator,
    anchor: torch.Tensor | None = None,
    task: Task = CAUSAL_LM,
) -> torch.Tensor:
    """Run ``steps`` optimiser steps of ``task``'s loss; returns the per-step losses.

    ``anchor`` is w_t for the FedProx term. Gradients live in ``fm.grad``, so the proximal
    term and clipping are single operations on the flat gradient.
    """
    model = fm.model
    model.train()
    losses = torch.empty(steps)
    for step in range(steps):
        batch = task.batch(tokens, cfg.batch_size, cfg.seq_len, gen)
        fm.zero_grad()
        loss = task.loss(model, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite training loss at local step {step + 1}")
        loss.backward()
        if anchor is not None and cfg.prox_mu > 0:
            fm.grad.add_(fm.flat - anchor, alpha=cfg.prox_mu)
        if cfg.grad_clip > 0:
            norm = fm.grad.norm()
            if norm > cfg.grad_clip:
                fm.grad.mul_(cfg.grad_clip / (norm + 1e-6))
        opt.step()
        losses[step] = loss.detach().cpu()
    return losses


def local_update(
    fm: FlatModel,
    global_weights: torch.Tensor,
    tokens: torch.Tensor,
    cfg: ClientConfig,
    gen: torch.Generator,
    client_id: str,
    round: int,
    opt_memory: dict | None = None,
    trainable: torch.Tensor | None = None,
    task: Task = CAUSAL_LM,
) -> Update | Failure:
    """Train from ``global_weights`` on ``tokens``; return Δ_k = w_k − w_t or a Failure.

    ``opt_memory`` (client-local, never sent) carries the optimiser state from this
    client's previous round to the next when ``client.keep_optimizer_state`` is on.
    ``trainable`` (one bool per parameter) restricts training to a device tier's slice:
    the other parameters get no gradient ("gradient masking") and stay at w_t.
    """
    if tokens.numel() < 2:
        return Failure("no training text (fewer than 2 tokens)")
    start = time.perf_counter()
    fm.load(global_weights)
    opt = make_optimizer(fm, cfg, trainable)
    if trainable is not None:
        for p, keep in zip(fm.params(), trainable.tolist(), strict=True):
            p.requires_grad_(keep)
    if opt_memory is not None and "state" in opt_memory:
        opt.load_state_dict(opt_memory["state"])
    steps = num_local_steps(task.epoch_batches(tokens, cfg.batch_size, cfg.seq_len), cfg)
    anchor = global_weights.to(fm.flat.device)  # w_t where the model is (FedProx)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))  # dropout
        try:
            losses = train_steps(fm, opt, tokens, cfg, steps, gen, anchor, task)
        except NonFiniteLoss as exc:
            return Failure(str(exc))
        finally:
            if trainable is not None:
                for p in fm.params():
                    p.requires_grad_(True)
    if opt_memory is not None:
        opt_memory["state"] = opt.state_dict()
    delta = fm.delta(global_weights)
    norm = float(delta.norm())
    if not math.isfinite(norm):
        return Failure("non-finite values in the update")
    seconds = time.perf_counter() - start
    return Update(
        client_id=client_id,
        round=round,
        delta=delta,
        num_examples=task.num_examples(tokens),
        metrics={
            "train_loss": float(losses.mean()),
            "loss_first": float(losses[0]),
            "loss_last": float(losses[-1]),
            "steps": float(steps),
            "update_norm": norm,
            "seconds": seconds,
            "tokens_per_s": steps * cfg.batch_size * cfg.seq_len / max(seconds, 1e-9),
        },
    )
