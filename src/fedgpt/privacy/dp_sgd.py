"""Record-level DP inside each client: DP-SGD with Opacus.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", Algorithm 1): each
step draws a Poisson sample of the client's training windows with rate q = B/n (every
window independently, from the OS CSPRNG: the server, which sends the round's seed, must
not know which records a step used, or the amplification by subsampling would not hold
against it; from the seeded generator only with ``privacy.reproducible_noise``),
computes per-sample gradients g_i, clips each to norm C,
g̃ = (Σ_i g_i·min(1, C/‖g_i‖) + N(0, z²C²I)) / B, and steps the client's optimiser with g̃.
Per-sample gradients and clipping are Opacus' (``GradSampleModule`` with functorch,
``DPOptimizer``); noise comes from FedGPT's source (the OS CSPRNG, or the seeded
generator with ``privacy.reproducible_noise``). A "record" is one window of
``client.seq_len + 1`` tokens of the client's text (non-overlapping), so ε bounds what the
update reveals about any one such window. An empty Poisson sample still takes a step
(noise only), as the mechanism requires.

Each client accounts its own ε: its rounds compose ``steps`` Poisson-subsampled Gaussian
steps with its own q and z (``Accountant``). Its reply carries no record count (n = 1:
equal weights) and no loss, since each changes with one record; only the timing and its
ε (which, through q = B/n, still depends on n) go to the server.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import torch

from fedgpt.client.algorithm import Training
from fedgpt.client.trainer import Failure, Update, make_optimizer
from fedgpt.config import ClientConfig, PrivacyConfig
from fedgpt.errors import FedGPTError
from fedgpt.models.params import FlatModel
from fedgpt.privacy.mechanisms import gaussian_noise, secure_uniform
from fedgpt.tasks import CausalLM
from fedgpt.tasks.windows import record_windows  # noqa: F401  (the LM's records)


def _require_opacus():
    try:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
    except ImportError:  # pragma: no cover
        raise FedGPTError(
            'privacy.mode = "dp_sgd" needs Opacus: pip install "fedgpt[dp]" (or opacus)'
        ) from None
    return GradSampleModule, DPOptimizer


def sample_rate(num_records: int, batch_size: int) -> float:
    return min(1.0, batch_size / max(num_records, 1))


def dp_sgd_update(
    fm: FlatModel,
    global_weights: torch.Tensor,
    tokens: torch.Tensor,
    cfg: ClientConfig,
    pcfg: PrivacyConfig,
    gen: torch.Generator,
    client_id: str,
    round: int,
    task=None,
) -> tuple[Update | Failure, float]:
    """Train with DP-SGD from ``global_weights``; returns the update and the sample rate q."""
    GradSampleModule, DPOptimizer = _require_opacus()
    start = time.perf_counter()
    task = task if task is not None else CausalLM()
    windows = task.records(tokens, cfg.seq_len)
    n = windows.shape[0]
    if n == 0:
        return Failure("no complete record for DP-SGD"), 0.0
    q = sample_rate(n, cfg.batch_size)
    expected = max(1, round_half(q * n))
    noise_gen = gen if pcfg.reproducible_noise else None
    fm.load(global_weights)
    params = fm.params()
    numel = fm.flat.numel()

    class _Optimizer(DPOptimizer):
        def add_noise(self) -> None:  # one flat draw from FedGPT's noise source
            std = self.noise_multiplier * self.max_grad_norm
            noise = gaussian_noise(numel, std, noise_gen).to(fm.flat.device)
            off = 0
            for p in self.params:
                k = p.numel()
                p.grad = (p.summed_grad + noise[off : off + k].view_as(p)).view_as(p)
                off += k

    gsm = GradSampleModule(fm.model, batch_first=True, loss_reduction="mean", force_functorch=True)
    losses = []
    try:
        opt = _Optimizer(
            make_optimizer(fm, cfg),
            noise_multiplier=pcfg.noise_multiplier,
            max_grad_norm=pcfg.clip_norm,
            expected_batch_size=expected,
            loss_reduction="mean",
        )
        gsm.train()
        for step in range(cfg.local_steps):
            u = torch.rand(n, generator=gen) if noise_gen is not None else secure_uniform(n)
            mask = u < q
            opt.zero_grad(set_to_none=True)
            if not bool(mask.any()):
                for p in params:  # an empty sample: zero per-sample gradients, noise only
                    p.grad_sample = torch.zeros((1, *p.shape), device=p.device)
            else:
                loss = task.loss(gsm, windows[mask])
                if not torch.isfinite(loss):
                    return Failure(f"non-finite training loss at step {step + 1}"), q
                loss.backward()
                losses.append(float(loss.detach()))
            opt.step()
    finally:
        gsm._close()
        fm.rebind_grads()
    delta = fm.delta(global_weights)
    norm = float(delta.norm())
    if not math.isfinite(norm):
        return Failure("non-finite values in the update"), q
    metrics = {
        "train_loss": sum(losses) / len(losses) if losses else float("nan"),
        "steps": float(cfg.local_steps),
        "update_norm": norm,
        "seconds": time.perf_counter() - start,
    }
    if not losses:
        metrics.pop("train_loss")
    return Update(client_id, round, delta, n, metrics), q


def round_half(x: float) -> int:
    return int(math.floor(x + 0.5))


class DPSGDTraining(Training):
    """DP-SGD as a client's :class:`~fedgpt.client.algorithm.Training`: each client
    accounts (and enforces) its own record-level ε: it refuses a round whose planned steps
    would take it past ``privacy.target_epsilon``, and reports its ε with the update."""

    name = "dp_sgd"

    def __init__(self, cfg: ClientConfig, pcfg: PrivacyConfig):
        self.cfg, self.pcfg = cfg, pcfg
        self.steps: dict[str, list[tuple[float, float]]] = {}  # (z, q) per step, per client
        # steps of releases that left in rounds the run redid after a restart: no longer
        # on the run's path, still spent (see charge_unseen)
        self.unseen: dict[str, list[tuple[float, float]]] = {}

    def run(self, fm, weights, data, task, gen, rnd, trainable):
        from fedgpt.privacy.accountant import Accountant

        p, c, cid = self.pcfg, self.cfg, data.client_id
        n = task.records(data.train, c.seq_len).shape[0]
        history = list(self.steps.get(cid, []))
        spent = history + self.unseen.get(cid, [])
        planned = [(p.noise_multiplier, sample_rate(n, c.batch_size))] * c.local_steps
        if p.target_epsilon and (
            Accountant(p.delta, p.accountant, spent + planned).epsilon() > p.target_epsilon
        ):
            return Failure("privacy budget exhausted")
        result, q = dp_sgd_update(fm, weights, data.train, c, p, gen, cid, rnd, task)
        if isinstance(result, Failure):
            return result
        now = [(p.noise_multiplier, q)] * c.local_steps
        self.steps[cid] = history + now
        # neither the record count nor the loss leaves (each changes with one record):
        # equal weights, timing and the client's own epsilon only
        kept = {k: result.metrics[k] for k in ("steps", "seconds")}
        eps = Accountant(p.delta, p.accountant, spent + now).epsilon()
        return dataclasses.replace(result, num_examples=1, metrics={**kept, "epsilon": eps})

    def state_dict(self) -> dict[str, bytes]:
        out = {"dp_steps": json.dumps(self.steps).encode()}
        if self.unseen:
            out["dp_unseen"] = json.dumps(self.unseen).encode()
        return out

    def load_state_dict(self, saved) -> None:
        if "dp_steps" in saved:
            self.steps = _steps(saved["dp_steps"])
        self.unseen = _steps(saved.get("dp_unseen", b"{}"))

    def charge_unseen(self, newer) -> None:
        """Add the steps ``newer`` (a later state of these clients) took beyond the
        restored ones to ``unseen``: they were released, so they stay spent."""
        later, later_unseen = (
            _steps(newer.get("dp_steps", b"{}")),
            _steps(newer.get("dp_unseen", b"{}")),
        )
        for cid in set(later) | set(later_unseen):
            extra = later.get(cid, [])[len(self.steps.get(cid, [])) :]
            total = later_unseen.get(cid, []) + extra
            if len(total) > len(self.unseen.get(cid, [])):
                self.unseen[cid] = total


def _steps(raw: bytes) -> dict[str, list[tuple[float, float]]]:
    return {k: [(float(z), float(q)) for z, q in v] for k, v in json.loads(raw).items()}
