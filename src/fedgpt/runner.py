"""The :class:`Runner`: a federation's rounds into its run folder, the same for every
runtime (``run_experiment`` in-process, the Flower ServerApp over Flower's Grid).

    runner = Runner(cfg, prep, server, privacy, run_dir, hooks)
    summary = runner.run()

Rounds run with quorum retries until ``federation.rounds``, the privacy budget, or a
round without quorum; what is written is the callbacks' (:mod:`fedgpt.callbacks`:
metrics, ledger, checkpoints, TensorBoard, progress, and the report once the summary is
written); at the end the model and the summary. ``resume`` continues from the last
checkpoint to exactly the weights of an uninterrupted run. A run in which no client ever
took part raises :class:`~fedgpt.errors.RunFailed` after writing what happened.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from fedgpt.callbacks import Callback, Hooks, default_callbacks
from fedgpt.config import RunConfig, config_hash, to_toml
from fedgpt.data import dataset_stats
from fedgpt.errors import RunError, RunFailed
from fedgpt.federation.checkpoint import Checkpoint, usable_checkpoint
from fedgpt.federation.cohort import conceal
from fedgpt.federation.loop import FederatedServer
from fedgpt.federation.state import RoundResult, ServerState
from fedgpt.files import read_jsonl, write_atomic
from fedgpt.models.build import save_model

EMPTY_ROUNDS = 3  # consecutive rounds in which every client failed: the run stops


class Runner:
    """See the module docstring. ``on_attempt(k)`` is called before attempt k of a round
    (a fault injector redraws); ``client_state()`` gives what the clients carry between
    rounds (saved in every checkpoint) and ``restore_clients(checkpoint)`` puts it back on
    resume (in-process: DP-SGD accounting, local-DP releases, optimiser memory, FedMD
    models, secure-sum state); ``baselines(rows,
    last_eval)`` adds the baselines; ``extra`` is merged into the summary."""

    def __init__(
        self,
        cfg: RunConfig,
        prep,
        server: FederatedServer,
        privacy,
        run_dir: Path,
        hooks: Hooks | None = None,
        *,
        callbacks: list[Callback] | None = None,
        resume: bool = False,
        on_attempt: Callable[[int], None] | None = None,
        restore_clients: Callable[[Checkpoint], None] | None = None,
        client_state: Callable[[], dict[str, bytes]] | None = None,
        baselines: Callable[[list[dict], dict], dict] | None = None,
        extra: dict | None = None,
        t_start: float | None = None,
        run_id: str | None = None,
    ):
        self.cfg, self.prep, self.server, self.privacy = cfg, prep, server, privacy
        self.run_dir, self.hooks = Path(run_dir), hooks or Hooks()
        self.callbacks = default_callbacks() if callbacks is None else callbacks
        self.resumed, self.on_attempt, self.restore_clients = resume, on_attempt, restore_clients
        self.client_state = client_state  # what the clients carry, saved in checkpoints
        self.baselines, self.extra = baselines, extra or {}
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.config_hash = config_hash(cfg)
        self.state: ServerState = server.init_state(prep.init)
        self.rows: list[dict] = []
        self.last_eval: dict | None = None
        self.stopped: str | None = None
        self.run_id = run_id or ""  # the run folder's identity (RUN_DIR/run.json)
        self.ledger = None  # the LedgerWriter's ledger, if the run keeps one

    def run(self) -> dict:
        self._start()
        empty = 0
        while self.state.round < self.cfg.federation.rounds and self.stopped is None:
            result = self._round()
            if result is not None:
                empty = empty + 1 if not result.participants else 0
                if empty >= EMPTY_ROUNDS:
                    self.stopped = _all_failed(self.rows[-EMPTY_ROUNDS:])
        summary = self._finish()
        if self.rows and not any(r["participants"] for r in self.rows):
            raise RunFailed(self.stopped or _all_failed(self.rows))
        return summary

    def _start(self) -> None:
        if not self.resumed:
            check_new_run_dir(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_dir / "config.toml", to_toml(self.cfg))
        self.run_id = run_identity(self.run_dir, self.run_id)
        hooks = self.hooks
        self.server.on_reply = lambda cid, reply: hooks.advance()
        self.server.on_eval_start = lambda rnd, n: hooks.stage(f"round {rnd}: evaluating", n)
        total = self.cfg.federation.rounds
        self.server.on_round_start = lambda r, cohort: hooks.stage(
            f"round {r}/{total}: training", len(cohort)
        )
        if self.resumed:
            self._restore()
        for cb in self.callbacks:
            cb.on_start(self)
        hooks.rounds(total, self.state.round)

    def _restore(self) -> None:
        ck, latest, skipped = usable_checkpoint(self.run_dir / "checkpoints")
        for line in skipped:
            self.hooks.log(line)
        if ck is not None:
            if ck.weights.shape != self.prep.init.shape:
                raise RunError(f"--resume: checkpoint '{latest}' does not fit this model")
            self.state = ServerState(ck.round, ck.weights, ck.server_state)
            self.privacy.load_state(ck.meta.get("privacy", {}))
            if self.restore_clients is not None:
                self.restore_clients(ck)
            self.hooks.log(f"resuming after round {ck.round} from {latest}")
            note_resume(self.run_dir, ck.round)
        rows, torn = read_jsonl(self.run_dir / "metrics.jsonl")
        if torn:
            self.hooks.log("metrics.jsonl: cut back a torn last line")
        self.rows = [r for r in rows if r.get("round", 0) <= self.state.round]

    def _round(self) -> RoundResult | None:
        """One round with its retries; None when the run stops before or after it."""
        if self.privacy.would_exceed():
            eps = self.privacy.epsilon()
            return self._stop(
                f"privacy budget: one more round would exceed epsilon "
                f"{self.cfg.privacy.target_epsilon} (spent {eps:.4f})"
            )
        for cb in self.callbacks:
            cb.on_round_start(self)
        new_state, result, attempts = run_round_with_retries(
            self.server, self.state, self.cfg, self.on_attempt, self.hooks
        )
        if result.below_quorum is not None:
            return self._stop(
                f"quorum not reached in round {result.round} after {attempts} attempt(s) "
                f"({result.below_quorum}); the global model is unchanged"
            )
        self.state = new_state
        row = result.row()
        if self.privacy.mechanism.secret_sampling:  # who took part stays out of the clear
            hashes = result.update_hashes
            row |= conceal(self.run_dir, result.round, result.participants, result.dropped, hashes)
        row["client_steps"] = int(sum(m.get("steps", 0) for m in result.client_metrics.values()))
        if attempts > 1:
            row["retries"] = attempts - 1
        self.rows.append(row)
        if result.eval is not None:
            self.last_eval = result.eval
        for cb in self.callbacks:
            cb.on_round(self, result, row, attempts)
        return result

    def _stop(self, why: str) -> None:
        self.stopped = why
        self.hooks.log(f"stopping after round {self.state.round}: {why}")
        return None

    def _finish(self) -> dict:
        rows, state, clock = self.rows, self.state, time.perf_counter
        t0 = clock()
        if self.last_eval is None or not rows or rows[-1].get("test_loss") is None:
            self.last_eval = self.server.evaluate(state.weights, state.round)
        final_eval, t0 = clock() - t0, clock()
        rest = getattr(self.server.runtime, "close", None)
        if rest is not None:  # the federation is done: worker processes end before the report
            rest()  # (a later exchange, for baselines, starts them again)
        self.prep.fm.load(state.weights)
        save_model(self.prep.bundle, self.run_dir / "model")
        summary = self._summary()
        t0 = clock()
        summary["samples"] = report_samples(self.prep.bundle, self.cfg)
        samples = clock() - t0
        for cb in self.callbacks:
            cb.on_end(self, summary)
        t0 = clock()
        if self.baselines is not None:
            summary["baselines"] = self.baselines(rows, self.last_eval)
            self.prep.fm.load(state.weights)
        baselines = clock() - t0
        summary.update(self.extra)
        summary["federated_seconds"] = sum(r["seconds"] for r in rows)
        summary["seconds"] = clock() - self.t_start
        since = max(resumes(self.run_dir) or [0])  # this process's rounds only
        mine = [r for r in rows if int(r["round"]) > since]
        summary["time"] = time_breakdown(mine, final_eval, samples, baselines, summary["seconds"])
        summary["config_path"] = "config.toml"
        summary["resumed_after"] = resumes(self.run_dir)
        write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        for cb in self.callbacks:
            cb.on_saved(self, summary)
        for cb in self.callbacks:
            cb.on_closed(self, summary)
        return summary

    def _summary(self) -> dict:
        prep, privacy, cfg, ev = self.prep, self.privacy, self.cfg, self.last_eval
        trainable, total = prep.bundle.counts()
        ids = set(self.server.client_ids)
        known = [c for c in prep.clients if c.client_id in ids]
        return {
            "run_name": self.run_dir.name,
            "task": cfg.task.kind,
            "rounds": self.state.round,
            "config_hash": self.config_hash,
            "model": {
                "name": prep.bundle.name,
                "trainable_params": trainable,
                "total_params": total,
                "lora": prep.bundle.lora,
                "dtype": cfg.model.dtype,
                "device": str(prep.fm.flat.device),
            },
            "dataset": dataset_stats(known) if known else {"num_clients": len(ids)},
            "federated": {k: ev[k] for k in FEDERATED if k in ev},
            "federated_per_client": ev["per_client"],
            "baselines": None,
            "stopped": self.stopped,
            "privacy": None if not privacy.active else {
                "mode": cfg.privacy.mode,
                "epsilon": privacy.epsilon(),
                "delta": cfg.privacy.delta,
                "noise_multiplier": privacy.z,
                "accountant": cfg.privacy.accountant,
            },
        }  # fmt: skip


def report_samples(bundle, cfg: RunConfig) -> list[dict]:
    """The final model's continuation of each ``report.prompts`` (fixed text, never client
    data), seeded by the run's seed; none for a task whose model does not generate text."""
    from fedgpt.build import build_task
    from fedgpt.models.generate import sample

    r = cfg.report
    if not r.prompts or not build_task(cfg).generates:
        return []
    context = min(bundle.max_length, cfg.client.seq_len)
    return [
        {
            "prompt": p,
            "text": sample(bundle, p, r.sample_tokens, r.temperature, cfg.seed + i, context),
        }
        for i, p in enumerate(r.prompts)
    ]


def time_breakdown(rows, final_eval: float, samples: float, baselines: float, total: float):
    """Where this process's time went, in seconds: its federated rounds (training and
    exchange; the last attempt of a retried round), evaluation, sample generation,
    baselines, and the rest of its wall time (preparing data and model, saving). ``rows``
    are the rounds this process ran (after the last resume)."""
    evaluation = sum(r.get("eval_seconds", 0.0) for r in rows) + final_eval
    federation = sum(r["seconds"] for r in rows) - sum(r.get("eval_seconds", 0.0) for r in rows)
    parts = {"federation": federation, "evaluation": evaluation, "samples": samples,
             "baselines": baselines}  # fmt: skip
    parts["other"] = max(total - sum(parts.values()), 0.0)
    return {k: round(v, 4) for k, v in parts.items()}


RUN_ID = "run.json"
FEDERATED = ("test_loss", "test_accuracy", "perplexity", "test_auc", "test_auc_ci", "test_ece",
             "test_hist")  # fmt: skip


def read_run_id(run_dir: Path) -> str | None:
    """The identity kept in ``RUN_DIR/run.json``, or None."""
    try:
        run_id = str(json.loads((Path(run_dir) / RUN_ID).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = len(run_id) == 32 and all(c in "0123456789abcdef" for c in run_id)
    return run_id if ok else None


def resumes(run_dir: Path) -> list[int]:
    """The rounds after which this run was resumed (``run.json``), oldest first."""
    try:
        got = json.loads((Path(run_dir) / RUN_ID).read_text()).get("resumed_after", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [int(r) for r in got if isinstance(r, int)]


def note_resume(run_dir: Path, rnd: int) -> None:
    run_id = read_run_id(run_dir)
    if run_id is not None:
        record = {"run_id": run_id, "resumed_after": [*resumes(run_dir), rnd]}
        write_atomic(Path(run_dir) / RUN_ID, json.dumps(record))


def run_identity(run_dir: Path, proposed: str | None = None) -> str:
    """The run folder's identity: 128 random bits from the OS (or ``proposed``), made once
    and kept in ``RUN_DIR/run.json`` (participants key their receipts and state on it)."""
    run_id = read_run_id(run_dir)
    if run_id is None:
        run_id = proposed or os.urandom(16).hex()
        write_atomic(run_dir / RUN_ID, json.dumps({"run_id": run_id}))
    return run_id


RUN_FILES = ("config.toml", "ledger.jsonl", "metrics.jsonl", "checkpoints", "summary.json")


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a run folder that would overwrite another run (or is not a folder)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"'{run_dir}' is a file, not a run folder: choose another --out")
    if run_dir.is_dir() and any((run_dir / f).exists() for f in RUN_FILES):
        raise RunError(
            f"'{run_dir}' holds a run already: continue it with --resume {run_dir}, or choose "
            "a new --out"
        )


def new_run_dir(cfg: RunConfig) -> Path:
    """``out_dir/name``, or ``name-2``, ``name-3``... if that already holds a run."""
    base = Path(cfg.out_dir) / cfg.name
    path, i = base, 1
    while path.exists() and any(path.iterdir()):
        i += 1
        path = base.with_name(f"{cfg.name}-{i}")
    return path


def resume_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise RunError(f"--resume: '{run_dir}' is not a run folder (no config.toml)")
    from fedgpt.build import load_run_config

    return load_run_config(cfg_path, overrides)


def _all_failed(rows: list[dict]) -> str:
    """One line: every client failed in these rounds, with the commonest reasons."""
    reasons = Counter(d["reason"] for r in rows for d in r["dropped"])
    top = "; ".join(f"{why} (x{n})" for why, n in reasons.most_common(3)) or "no replies"
    span = f"{rows[0]['round']}-{rows[-1]['round']}" if len(rows) > 1 else f"{rows[0]['round']}"
    return f"every client failed in rounds {span}: {top}"


def run_round_with_retries(
    server: FederatedServer,
    state: ServerState,
    cfg: RunConfig,
    on_attempt: Callable[[int], None] | None,
    hooks: Hooks,
) -> tuple[ServerState, RoundResult, int]:
    """One round; below quorum (``runtime.min_replies``) the same round is tried again, up
    to ``runtime.round_retries`` more times. Returns (state, result, attempts made)."""
    attempt = 0
    while True:
        if on_attempt is not None:
            on_attempt(attempt)  # e.g. a fault injector: a retry draws its faults afresh
        new_state, result = server.run_round(state)
        if result.below_quorum is None or attempt >= cfg.runtime.round_retries:
            return new_state, result, attempt + 1
        attempt += 1
        hooks.log(
            f"round {result.round}: {result.below_quorum}; "
            f"retry {attempt} of {cfg.runtime.round_retries}"
        )
