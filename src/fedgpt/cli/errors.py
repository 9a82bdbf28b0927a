"""How the command line reports failures: one line, and an exit code that says whose."""

from __future__ import annotations

import functools
import sys

import typer

from fedgpt.errors import FedGPTError, RunFailed


def user_errors(fn):
    """Turn FedGPTError into one line on stderr and exit code 2 (a user mistake), and
    RunFailed into one line and exit code 1 (the run failed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FedGPTError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None
        except RunFailed as exc:  # the run itself failed; its folder holds what happened
            print(f"run failed: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper
