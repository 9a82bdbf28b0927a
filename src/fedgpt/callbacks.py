"""What a run writes, each a callback of the :class:`~fedgpt.runner.Runner`:

* :class:`MetricsFile` — ``metrics.jsonl``, one line per round;
* :class:`LedgerWriter` — the signed, hash-chained ``ledger.jsonl`` (before the
  checkpoint: a resume cuts entries past it);
* :class:`Checkpoints` — ``checkpoints/round_*`` (weights, server state, privacy state);
* :class:`Receipts` — each participant's signed receipt of the ledger's head, once the
  round's checkpoint is on disk (fedgpt.federation.receipts);
* :class:`TensorBoard` — scalars for ``tensorboard --logdir RUN_DIR/tensorboard``;
* :class:`Progress` — the :class:`Hooks` a CLI draws progress bars with.

A callback sees ``on_start(run)``, ``on_round_start(run)``, ``on_round(run, result, row,
attempts)`` and
``on_end(run, summary)``, ``on_saved(run, summary)`` (``summary.json`` written) and
``on_closed(run, summary)`` (every file written); ``run`` is the runner (its ``cfg``,
``state``, ``run_dir``...).
"""

from __future__ import annotations

import json
from pathlib import Path

from fedgpt.federation.checkpoint import Checkpoint, save_checkpoint
from fedgpt.federation.ledger import Ledger, utc_now
from fedgpt.federation.state import RoundResult, count
from fedgpt.files import append_line, read_jsonl, write_atomic


class Hooks:
    """Progress callbacks; the CLI draws progress bars with them. All optional."""

    def rounds(self, total: int, done: int) -> None: ...
    def stage(self, name: str, total: int | None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def round_done(self, row: dict) -> None: ...
    def log(self, msg: str) -> None: ...


class Callback:
    def on_start(self, run) -> None: ...
    def on_round_start(self, run) -> None: ...
    def on_round(self, run, result: RoundResult, row: dict, attempts: int) -> None: ...
    def on_end(self, run, summary: dict) -> None: ...
    def on_saved(self, run, summary: dict) -> None: ...  # summary.json is written
    def on_closed(self, run, summary: dict) -> None: ...  # every file of the run is written


def read_rows(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (a torn last line left out)."""
    return read_jsonl(path)[0]


class MetricsFile(Callback):
    """``metrics.jsonl``: rewritten up to the resumed round at the start, then appended."""

    def on_start(self, run) -> None:
        write_atomic(run.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in run.rows))

    def on_round(self, run, result, row, attempts) -> None:
        append_line(run.run_dir / "metrics.jsonl", json.dumps(row))


class LedgerWriter(Callback):
    """The run's ledger (``runtime.ledger``): a new one, or on resume the old one cut back
    to the checkpoint's round and checked against its weights (federation.ledger)."""

    def __init__(self):
        self.ledger: Ledger | None = None
        self.started = ""

    def on_start(self, run) -> None:
        r = run.cfg.runtime
        if not r.ledger:
            return
        if not run.resumed:
            self.ledger = Ledger.start(run.run_dir, r.ledger_key, run.config_hash, run.run_id)
        else:
            state = run.state
            self.ledger = Ledger.resume(
                run.run_dir, r.ledger_key, run.config_hash, state.round, state.weights, run.run_id
            )
        run.ledger = self.ledger
        if self.ledger is None:
            run.hooks.log("no ledger.jsonl to continue: the rest of this run keeps none")
            return
        run.hooks.log(f"ledger key fingerprint {self.ledger.fingerprint}")

    def on_round_start(self, run) -> None:
        self.started = utc_now()

    def on_round(self, run, result, row, attempts) -> None:
        if self.ledger is None:
            return
        s, cohort = run.state, row.get("cohort")
        who = (row["participants"], row["dropped"], {}) if cohort else (
            result.participants, result.dropped, result.update_hashes)  # fmt: skip
        self.ledger.append_round(
            s.round, *who, s.weights, s.opt_state, row.get("epsilon"), self.started,
            utc_now(), attempts - 1, cohort=cohort,
        )  # fmt: skip

    def on_end(self, run, summary) -> None:
        if self.ledger is not None:
            self.ledger.append_model(run.run_dir / "model", run.state.round, run.state.weights)
            summary["ledger"] = {"public_key_fingerprint": self.ledger.fingerprint}

    def on_closed(self, run, summary) -> None:
        if self.ledger is not None:
            planned, done = run.cfg.federation.rounds, run.state.round
            self.ledger.append_final(run.run_dir, planned, done, run.stopped)


class Checkpoints(Callback):
    def on_round(self, run, result, row, attempts) -> None:
        s, cfg = run.state, run.cfg
        meta = {
            "seed": cfg.seed,
            "config_hash": run.config_hash,
            "clients": len(run.server.client_ids),
            "privacy": run.privacy.state(),
        }
        clients = run.client_state() if run.client_state is not None else {}
        ckpt = Checkpoint(s.round, s.weights, s.opt_state, meta, clients)
        save_checkpoint(run.run_dir / "checkpoints", ckpt, keep=cfg.federation.checkpoint_keep)


class Receipts(Callback):
    """Each client that took part in the round gets the signed ledger head and the hash of
    its update as received (``runtime.receipts``; fedgpt.federation.receipts). Sent once
    the round's checkpoint is on disk, so a resumed run never redoes a receipted round."""

    def on_round(self, run, result, row, attempts) -> None:
        ledger = getattr(run, "ledger", None)
        if ledger is None or not run.cfg.runtime.receipts:
            return
        hashes = result.update_hashes
        who = sorted(set(result.participants) | set(hashes))
        receipts = {c: ledger.receipt(result.round, c, hashes.get(c), run.run_id) for c in who}
        run.server.send_receipts(result.round, run.run_id, receipts)


SCALARS = ("train_loss", "test_loss", "test_accuracy", "perplexity", "epsilon", "bytes_up")


class TensorBoard(Callback):
    """Scalars of every round under ``RUN_DIR/tensorboard`` (``torch.utils.tensorboard``;
    needs the ``tensorboard`` package, else a one-line notice and nothing written)."""

    def __init__(self):
        self.writer = None

    def on_start(self, run) -> None:
        if not run.cfg.report.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            run.hooks.log("tensorboard is not installed: no TensorBoard curves")
            return
        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"))

    def on_round(self, run, result, row, attempts) -> None:
        if self.writer is None:
            return
        for key in SCALARS:
            if isinstance(row.get(key), int | float):
                self.writer.add_scalar(key, row[key], row["round"])
        self.writer.add_scalar("participants", count(row["participants"]), row["round"])

    def on_end(self, run, summary) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress(Callback):
    def on_round(self, run, result, row, attempts) -> None:
        run.hooks.round_done(row)


class Report(Callback):
    """``report.md`` and its plots, from the run folder's files (:mod:`fedgpt.report`)."""

    def on_saved(self, run, summary) -> None:
        if not run.cfg.report.enabled:  # `fedgpt report RUN_DIR` writes it later
            return
        from fedgpt.report import write_report

        write_report(run.run_dir)


def default_callbacks() -> list[Callback]:
    """What every run writes, in order: ledger, metrics, checkpoint, receipts, curves,
    progress, report."""
    return [
        LedgerWriter(), MetricsFile(), Checkpoints(), Receipts(), TensorBoard(), Progress(),
        Report(),
    ]  # fmt: skip
