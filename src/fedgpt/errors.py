"""Errors raised for user mistakes.

Every check on user input (configuration, data files, model paths, updates arriving from
the network) raises a :class:`FedGPTError` subclass whose message names the key, file or
line and what was expected. The CLI prints the message as one line and exits with code 2.
"""

from __future__ import annotations


class FedGPTError(Exception):
    """Base class of all user-facing errors."""


class ConfigError(FedGPTError):
    """A configuration key is unknown, has the wrong type or is out of range."""


class DataError(FedGPTError):
    """A data file or directory is missing or malformed."""


class ModelError(FedGPTError):
    """A model path is missing or does not hold a usable checkpoint."""


class RunError(FedGPTError):
    """A run folder is missing, incomplete or inconsistent (e.g. on resume)."""


class RunFailed(Exception):
    """The run itself failed (e.g. every client failed in every round): the run folder
    holds what happened, and the CLI exits with code 1 and this one-line reason."""
