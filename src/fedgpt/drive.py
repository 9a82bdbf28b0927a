"""Driving a federation into its run folder: rounds (with quorum retries), metrics,
the signed ledger, checkpoints (and ``--resume`` from them), the model, the summary and
the report. The same for every runtime: ``run_experiment`` calls it over the in-process
runtime, the Flower ServerApp over Flower's Grid.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from fedgpt.config import RunConfig, config_hash, to_toml
from fedgpt.data import dataset_stats
from fedgpt.errors import RunError
from fedgpt.federation.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fedgpt.federation.ledger import Ledger, utc_now
from fedgpt.federation.loop import FederatedServer
from fedgpt.federation.state import RoundResult, ServerState
from fedgpt.models.build import save_model
from fedgpt.privacy.engine import ServerPrivacy


class Hooks:
    """Progress callbacks; the CLI draws progress bars with them. All optional."""

    def rounds(self, total: int, done: int) -> None: ...
    def stage(self, name: str, total: int | None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def round_done(self, row: dict) -> None: ...
    def log(self, msg: str) -> None: ...


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


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


def drive(
    cfg: RunConfig,
    prep,
    server: FederatedServer,
    privacy: ServerPrivacy,
    run_dir: Path,
    hooks: Hooks,
    *,
    resume: bool = False,
    on_attempt: Callable[[int], None] | None = None,
    app=None,
    baselines: Callable[[list[dict], dict], dict] | None = None,
    extra: dict | None = None,
    t_start: float | None = None,
) -> dict:
    """Run (or, with ``resume``, continue from the last checkpoint) ``server``'s rounds and
    write the run folder; returns the summary. ``prep`` is the server's
    :class:`~fedgpt.experiment.Prepared`; ``app`` the in-process ClientApp (or None);
    ``baselines(rows, last_eval)`` adds the baselines; ``extra`` is merged into the
    summary; ``t_start`` (perf_counter) is when the run began (default: now)."""
    t_start = time.perf_counter() if t_start is None else t_start
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))
    trainable, total = prep.bundle.counts()
    ids = list(server.client_ids)
    known = [c for c in prep.clients if c.client_id in set(ids)]
    server.on_reply = lambda cid, reply: hooks.advance()
    server.on_eval_start = lambda rnd, n: hooks.stage(f"round {rnd}: evaluating", n)
    ckpt_root = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    state = server.init_state(prep.init)
    rows: list[dict] = []
    if resume:
        latest = latest_checkpoint(ckpt_root)
        if latest is not None:
            ck = load_checkpoint(latest)
            if ck.weights.shape != prep.init.shape:
                raise RunError(f"--resume: checkpoint '{latest}' does not fit this model")
            state = ServerState(ck.round, ck.weights, ck.server_state)
            privacy.load_state(ck.meta.get("privacy", {}))
            if app is not None:  # in-process: the clients' local-DP release counts
                app.releases = dict(ck.meta.get("privacy", {}).get("participation", {}))
            hooks.log(f"resuming after round {ck.round} from {latest}")
        rows = [r for r in read_rows(metrics_path) if r["round"] <= state.round]
    chash = config_hash(cfg)
    ledger = open_ledger(cfg, run_dir, chash, state, resume, hooks)
    _write_rows(metrics_path, rows)
    hooks.rounds(cfg.federation.rounds, state.round)
    last_eval: dict | None = None
    stopped = None
    for _ in range(state.round, cfg.federation.rounds):
        if privacy.would_exceed():
            stopped = (
                f"privacy budget: one more round would exceed epsilon "
                f"{cfg.privacy.target_epsilon} (spent {privacy.epsilon():.4f})"
            )
            hooks.log(f"stopping after round {state.round}: {stopped}")
            break
        n_sel = len(server.client_ids)
        server.on_round_start = lambda r, chosen: hooks.stage(
            f"round {r}/{cfg.federation.rounds}: training", len(chosen)
        )
        started = utc_now()
        new_state, result, attempts = run_round_with_retries(server, state, cfg, on_attempt, hooks)
        if result.below_quorum is not None:
            stopped = (
                f"quorum not reached in round {result.round} after {attempts} attempt(s) "
                f"({result.below_quorum}); the global model is unchanged"
            )
            hooks.log(f"stopping after round {state.round}: {stopped}")
            break
        state = new_state
        row = result.row()
        row["client_steps"] = int(sum(m.get("steps", 0) for m in result.client_metrics.values()))
        if attempts > 1:
            row["retries"] = attempts - 1
        rows.append(row)
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if result.eval is not None:
            last_eval = result.eval
        if ledger is not None:  # before the checkpoint: a resume cuts entries past it
            ledger.append_round(
                state.round,
                result.participants,
                result.dropped,
                result.update_hashes,
                state.weights,
                state.opt_state,
                row.get("epsilon"),
                started,
                utc_now(),
                attempts - 1,
            )
        save_checkpoint(
            ckpt_root,
            Checkpoint(
                state.round,
                state.weights,
                state.opt_state,
                {
                    "seed": cfg.seed,
                    "config_hash": chash,
                    "clients": n_sel,
                    "privacy": privacy.state(),
                },
            ),
            keep=cfg.federation.checkpoint_keep,
        )
        hooks.round_done(row)

    if last_eval is None or not rows or rows[-1].get("test_loss") is None:
        last_eval = server.evaluate(state.weights, state.round)
    prep.fm.load(state.weights)
    save_model(prep.bundle, run_dir / "model")
    if ledger is not None:
        ledger.append_model(run_dir / "model", state.round, state.weights)
    summary = {
        "run_name": run_dir.name,
        "rounds": state.round,
        "config_hash": chash,
        "model": {
            "name": prep.bundle.name,
            "trainable_params": trainable,
            "total_params": total,
            "lora": prep.bundle.lora,
        },
        "dataset": dataset_stats(known) if known else {"num_clients": len(ids)},
        "federated": {k: last_eval[k] for k in ("test_loss", "test_accuracy", "perplexity")},
        "federated_per_client": last_eval["per_client"],
        "baselines": None,
        "stopped": stopped,
        "privacy": None
        if not privacy.active
        else {
            "mode": cfg.privacy.mode,
            "epsilon": privacy.epsilon(),
            "delta": cfg.privacy.delta,
            "noise_multiplier": privacy.z,
            "accountant": cfg.privacy.accountant,
        },
    }
    if baselines is not None:
        summary["baselines"] = baselines(rows, last_eval)
        prep.fm.load(state.weights)
    summary.update(extra or {})
    summary["federated_seconds"] = sum(r["seconds"] for r in rows)
    summary["seconds"] = time.perf_counter() - t_start
    summary["config_path"] = "config.toml"
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    from fedgpt.report import write_report

    write_report(run_dir)
    return summary


def open_ledger(
    cfg: RunConfig, run_dir: Path, chash: str, state: ServerState, resume: bool, hooks: Hooks
) -> Ledger | None:
    """The run's ledger (``runtime.ledger``): a new one, or on resume the old one cut back
    to the checkpoint's round and checked against its weights (federation.ledger)."""
    r = cfg.runtime
    if not r.ledger:
        return None
    if not resume:
        return Ledger.start(run_dir, r.ledger_key, chash)
    ledger = Ledger.resume(run_dir, r.ledger_key, chash, state.round, state.weights)
    if ledger is None:
        hooks.log("no ledger.jsonl to continue: the rest of this run keeps none")
    return ledger


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
