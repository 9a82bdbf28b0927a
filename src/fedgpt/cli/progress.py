"""Rich progress bars (or plain log lines with ``--quiet``) for ``fedgpt run``."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from fedgpt.callbacks import Hooks
from fedgpt.federation.state import count


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def round_line(row: dict) -> str:
    return (
        f"round {row['round']:>3}  train_loss {_fmt(row['train_loss'], '.4f')}  "
        f"test_loss {_fmt(row['test_loss'], '.4f')}  acc {_fmt(row['test_accuracy'], '.4f')}  "
        f"clients {count(row['participants'])}  dropped {len(row['dropped'])}  "
        f"up {row['bytes_up'] / 2**20:.1f} MiB  {row['seconds']:.1f}s"
    )


def worth_logging(row: dict) -> bool:
    """Rounds with an evaluation or a dropped client get a log line; the rest only move
    the progress bar (a run has hundreds of rounds)."""
    return row["round"] == 1 or row["test_loss"] is not None or bool(row["dropped"])


class RichHooks(Hooks):
    """A bar over rounds, a bar for the current stage (clients training, evaluating,
    baselines), and a log line for rounds worth reading."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task = None
        self.rounds_task = None

    def rounds(self, total: int, done: int) -> None:
        self.rounds_task = self.progress.add_task("rounds", total=total, completed=done)

    def __enter__(self) -> RichHooks:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def stage(self, name: str, total: int | None) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def round_done(self, row: dict) -> None:
        if self.rounds_task is not None:
            self.progress.advance(self.rounds_task)
        if worth_logging(row):
            self.progress.console.print(round_line(row))

    def log(self, msg: str) -> None:
        self.progress.console.print(msg)


class QuietHooks(Hooks):
    """No bars: one plain line per round and per message, on stderr."""

    def __enter__(self) -> QuietHooks:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def round_done(self, row: dict) -> None:
        if worth_logging(row):
            print(round_line(row), file=sys.stderr, flush=True)

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
