"""Knowledge distillation on public text: knowledge moves, not (only) parameters.

Two methods share one core, ``distill`` (a few optimiser steps of
KL(softmax(teacher/T) ‖ softmax(student/T)) · T² on windows of the public plays, which
no client holds):

* **FedDF** — server-side ensemble distillation (Lin, Kong, Stich & Jaggi, "Ensemble
  Distillation for Robust Model Fusion in Federated Learning", NeurIPS 2020, Algorithm 1,
  lines 6–10): after aggregation the global model x_t (initialised at the aggregate) is
  trained toward the *averaged logits* of the participating client models
  x̂_t^k = w_t + Δ_k:  x_{t,j} = x_{t,j−1} − η ∇ KL(σ(1/|S_t| Σ_k f(x̂_t^k, d)), σ(f(x_{t,j−1}, d))).
  ``feddf_step`` returns that as a function of (aggregate, w_t, Δ, round).
* **FedMD** — logit-only collaboration (Li & Wang, "FedMD: Heterogenous Federated
  Learning via Model Distillation", NeurIPS 2019 workshop, §2 "Communicate / Aggregate /
  Distribute / Digest / Revisit"): each client keeps its own model (its architecture may
  be smaller than the server's), sends only its class scores f_k(x_p) on shared public
  windows; the consensus f̃ = (1/m) Σ_k f_k comes back, the client digests it (distils on
  the public windows) and revisits its private data. ``public_windows``, ``logits_on`` and
  ``distill`` are the client's tools; the server only averages logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from fedgpt.config import RunConfig
from fedgpt.models.device import forward
from fedgpt.models.params import FlatModel
from fedgpt.seeding import client_seed
from fedgpt.tasks.windows import sample_windows


def public_windows(public: torch.Tensor, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``seq_len`` input tokens of the public text, drawn from ``seed``
    (every party draws the same windows from the same seed)."""
    gen = torch.Generator().manual_seed(seed)
    return sample_windows(public, n, seq_len, gen)[:, :-1]


def _forward(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(inputs.shape[1]).expand_as(inputs)
    return forward(model, input_ids=inputs, position_ids=pos).logits


@torch.no_grad()
def logits_on(fm: FlatModel, weights: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The model's logits (n, seq, vocab) on ``inputs`` at ``weights`` (eval mode)."""
    fm.load(weights)
    fm.model.eval()
    return _forward(fm.model, inputs).float().cpu()


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/T) ‖ softmax(student/T)) · T², averaged over positions
    (Hinton et al. 2015, eq. 2 scaling)."""
    t = temperature
    v = student.shape[-1]
    log_p = F.log_softmax(student.reshape(-1, v) / t, dim=-1)
    q = F.log_softmax(teacher.reshape(-1, v) / t, dim=-1)
    return F.kl_div(log_p, q, log_target=True, reduction="batchmean") * t * t


def distill(
    fm: FlatModel,
    start: torch.Tensor,
    inputs: torch.Tensor,
    teacher: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    temperature: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """``steps`` Adam steps from ``start`` toward ``teacher`` logits on ``inputs``
    (minibatches of ``batch_size`` windows drawn from ``gen``); returns the new weights."""
    fm.load(start)
    fm.model.train()
    opt = torch.optim.Adam(fm.params(), lr=lr, foreach=True)
    for _ in range(steps):
        idx = torch.randint(0, inputs.shape[0], (min(batch_size, inputs.shape[0]),), generator=gen)
        fm.zero_grad()
        student = _forward(fm.model, inputs[idx]).float()
        kd_loss(student, teacher[idx].to(student.device), temperature).backward()
        opt.step()
    return fm.weights()


def feddf_step(
    fm: FlatModel, public: torch.Tensor, cfg: RunConfig
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """FedDF as a function (aggregate, w_t, deltas (K, P), round) -> distilled weights.

    Each round draws ``distill_windows`` public windows (seeded by round); the teacher is
    the mean of the K client models' logits on them (Lin et al. 2020, Alg. 1 line 8)."""
    f = cfg.federation

    def step(agg: torch.Tensor, w: torch.Tensor, deltas: torch.Tensor, rnd: int) -> torch.Tensor:
        seed = client_seed(cfg.seed, rnd, "__feddf__")
        inputs = public_windows(public, f.distill_windows, cfg.client.seq_len, seed)
        teacher = torch.zeros(())
        for k in range(deltas.shape[0]):  # one forward per client model (K small)
            teacher = teacher + logits_on(fm, w + deltas[k], inputs)
        teacher = teacher / deltas.shape[0]
        gen = torch.Generator().manual_seed(seed + 1)
        return distill(
            fm, agg, inputs, teacher, f.distill_steps, cfg.client.batch_size, f.distill_lr,
            f.distill_temperature, gen,
        )  # fmt: skip

    return step
