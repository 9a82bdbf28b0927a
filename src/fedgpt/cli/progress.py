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
    TimeRemainingColumn,
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
            TimeRemainingColumn(),
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


def clock(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    seconds = max(int(seconds), 0)
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


class QuietHooks(Hooks):
    """No bars (``--quiet``, or no terminal: a log file, CI): plain lines on stderr. Rounds
    worth reading get their line; every ``1/20`` of the rounds and every tenth of a long
    stage (preparation, baselines) a line with the elapsed time and an ETA."""

    def __init__(self, now=None):
        import time

        self.now = now or time.monotonic
        self.total = self.done = self.start_done = 0
        self.t0 = self.now()
        self.stage_name, self.stage_total, self.stage_done, self.stage_t0 = "", None, 0, 0.0
        self.stage_tick = 0

    def __enter__(self) -> QuietHooks:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def _say(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def rounds(self, total: int, done: int) -> None:
        self.total, self.done, self.start_done, self.t0 = total, done, done, self.now()

    def eta(self) -> str:
        ran = self.done - self.start_done
        if ran <= 0 or self.total <= 0:
            return ""
        spent = self.now() - self.t0
        left = spent / ran * (self.total - self.done)
        return f"[{self.done}/{self.total}, {clock(spent)} elapsed, ETA {clock(left)}]"

    def round_done(self, row: dict) -> None:
        self.done = row["round"]
        every = max(self.total // 20, 1)
        if worth_logging(row) or self.done % every == 0 or self.done == self.total:
            self._say(f"{round_line(row)}  {self.eta()}".rstrip())

    def stage(self, name: str, total: int | None) -> None:
        self.stage_name, self.stage_total, self.stage_done = name, total, 0
        self.stage_t0, self.stage_tick = self.now(), 0
        # a round's stages: its round line says enough; an unsized stage (preparing the
        # data) says nothing, so an input error stays the only line
        if total and not name.startswith("round "):
            self._say(name)

    def advance(self, n: int = 1) -> None:
        self.stage_done += n
        total = self.stage_total
        if not total or self.stage_name.startswith("round ") or total < 10:
            return
        tick = self.stage_done * 10 // total
        if tick > self.stage_tick and self.stage_done < total:
            self.stage_tick = tick
            spent = self.now() - self.stage_t0
            left = spent / self.stage_done * (total - self.stage_done)
            self._say(
                f"{self.stage_name}: {self.stage_done}/{total}, {clock(spent)} elapsed, "
                f"ETA {clock(left)}"
            )

    def log(self, msg: str) -> None:
        self._say(msg)
