"""Baselines measured in the same run as the federation, with the same model, seed and
evaluation:

* centralized — one model trained on the pooled training text of all clients, for the
  same number of training sequences the federation consumed (same batch size, so the
  same number of optimiser steps), with its own optimiser (``baselines.optimizer`` and
  ``baselines.lr``, AdamW by default: the strongest setting we measured for it);
* local-only — what a site can do alone: a seeded sample of clients each train only on
  their own text, validating every ``local_eval_every`` steps on a held-out tail of their
  training text and stopping when it no longer helps (``local_patience``), up to the
  per-client budget; each is evaluated on its own test split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from fedgpt.client.trainer import ClientData, make_optimizer, train_steps
from fedgpt.config import ClientConfig, RunConfig
from fedgpt.models.params import FlatModel
from fedgpt.seeding import client_seed
from fedgpt.tasks import CausalLM, Task

CAUSAL_LM = CausalLM()


def baseline_optimizer(cfg: RunConfig) -> ClientConfig:
    """The client settings with the baselines' optimiser and learning rate."""
    b = cfg.baselines
    return cfg.client.model_copy(update={"optimizer": b.optimizer, "lr": b.lr, "prox_mu": 0.0})


def train_centralized(
    fm: FlatModel,
    init: torch.Tensor,
    data: Mapping[str, ClientData],
    cfg: RunConfig,
    steps: int,
    on_progress: Callable[[int], None] | None = None,
    task: Task = CAUSAL_LM,
) -> tuple[torch.Tensor, dict]:
    """Train from ``init`` on the pooled training data for ``steps`` steps."""
    start = time.perf_counter()
    pooled = torch.cat([data[cid].train for cid in sorted(data)])
    fm.load(init)
    ccfg = baseline_optimizer(cfg)
    opt = make_optimizer(fm, ccfg)
    gen = torch.Generator().manual_seed(client_seed(cfg.seed, 0, "__centralized__"))
    chunk = 50
    done = 0
    losses = []
    while done < steps:
        n = min(chunk, steps - done)
        losses.append(train_steps(fm, opt, pooled, ccfg, n, gen, task=task))
        done += n
        if on_progress:
            on_progress(done)
    info = {
        "steps": steps,
        "examples_seen": steps * cfg.client.batch_size,
        "train_loss_last": float(torch.cat(losses)[-chunk:].mean()) if losses else None,
        "seconds": time.perf_counter() - start,
    }
    return fm.weights(), info


def _local_one(
    fm: FlatModel, init: torch.Tensor, d: ClientData, cfg: RunConfig, budget: int, task: Task
) -> dict:
    b, seq = cfg.baselines, cfg.client.seq_len
    train, val = task.split_tail(d.train, b.local_val_fraction, seq)
    fm.load(init)
    ccfg = baseline_optimizer(cfg)
    opt = make_optimizer(fm, ccfg)
    gen = torch.Generator().manual_seed(client_seed(cfg.seed, 0, "__local__/" + d.client_id))

    def val_loss() -> float:
        s, _, c = task.metric_sums(fm.model, val, seq)
        return s / max(c, 1)

    best, best_w, best_step, bad, done = val_loss(), fm.weights(), 0, 0, 0
    while done < budget and bad < b.local_patience:
        n = min(b.local_eval_every, budget - done)
        train_steps(fm, opt, train, ccfg, n, gen, task=task)
        done += n
        v = val_loss()
        if v < best:
            best, best_w, best_step, bad = v, fm.weights(), done, 0
        else:
            bad += 1
    fm.load(best_w)
    s, correct, count, extra = task.evaluate(fm.model, d.test, seq)
    own = {"test_auc": extra["auc"]} if extra.get("auc") is not None else {}
    return {
        "client": d.client_id,
        "steps": done,
        "best_step": best_step,
        "test_loss": s / max(count, 1),
        "test_accuracy": correct / max(count, 1),
        "count": count,
        **own,
    }


def train_local_only(
    fm: FlatModel,
    init: torch.Tensor,
    data: Mapping[str, ClientData],
    cfg: RunConfig,
    client_ids: Sequence[str],
    on_progress: Callable[[str], None] | None = None,
    task: Task = CAUSAL_LM,
) -> dict:
    """Local-only training of ``client_ids``; returns per-client results and their summary."""
    start = time.perf_counter()
    budget = cfg.baselines.local_max_steps or cfg.client.local_steps * cfg.federation.rounds
    per_client = []
    for cid in client_ids:
        per_client.append(_local_one(fm, init, data[cid], cfg, budget, task))
        if on_progress:
            on_progress(cid)
    acc = np.array([r["test_accuracy"] for r in per_client])
    loss = np.array([r["test_loss"] for r in per_client])
    return {
        "test_loss_mean": float(loss.mean()),
        "test_accuracy_mean": float(acc.mean()),
        "test_accuracy_std": float(acc.std()),
        "test_accuracy_min": float(acc.min()),
        "test_accuracy_max": float(acc.max()),
        "perplexity_mean": float(np.exp(np.minimum(loss, 50)).mean()),
        "num_clients": len(per_client),
        "steps_mean": float(np.mean([r["steps"] for r in per_client])),
        "budget": budget,
        "seconds": time.perf_counter() - start,
        "per_client": per_client,
        **_auc_mean(per_client),
    }


def _auc_mean(per_client: list[dict]) -> dict:
    aucs = [r["test_auc"] for r in per_client if r.get("test_auc") is not None]
    if not aucs:
        return {}
    return {"test_auc_mean": float(np.mean(aucs)), "test_auc_std": float(np.std(aucs))}


def sample_local_clients(client_ids: Sequence[str], k: int, seed: int) -> tuple[list[str], bool]:
    """A seeded sample of ``k`` clients (all of them if there are no more than ``k``)."""
    if len(client_ids) <= k:
        return list(client_ids), False
    rng = np.random.default_rng([seed, 0x10CA1])
    idx = np.sort(rng.choice(len(client_ids), size=k, replace=False))
    return [client_ids[i] for i in idx], True
