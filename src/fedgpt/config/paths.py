"""The paths a configuration names, checked before anything is prepared or written: each
problem is one :class:`~fedgpt.errors.ConfigError` naming its key (exit 2 from the CLI)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from fedgpt.errors import ConfigError

#: ``model.path`` may name a Hugging Face hub model as "hf:org/name" (the prefix says so:
#: a mistyped local path is never sent to the hub)
HUB_ID = re.compile(r"hf:[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")

SYSTEM_TREES = ("/proc", "/sys", "/dev")  # not places a run's files can live


def _os_errors_named(check):
    """``check(key, value)``, with an error of the OS itself (a name too long for the file
    system, a folder it may not search) as one ConfigError naming the key."""
    import functools

    @functools.wraps(check)
    def checked(key: str, value: str) -> None:
        try:
            check(key, value)
        except OSError as exc:
            shown = value if len(value) <= 60 else value[:57] + "..."
            raise ConfigError(f"{key} '{shown}': {exc.strerror or exc}") from None

    return checked


def _inside_system_tree(path: Path) -> bool:
    resolved = str(path.resolve())
    return any(resolved == t or resolved.startswith(t + "/") for t in SYSTEM_TREES)


@_os_errors_named
def check_folder_to_write(key: str, value: str) -> None:
    """``value`` is, or can become, a folder this process may write."""
    path = Path(value)
    if "\x00" in value:
        raise ConfigError(f"{key}: contains a NUL character")
    if _inside_system_tree(path):
        raise ConfigError(f"{key} '{value}': inside a system folder ({path.resolve()})")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key} '{value}': is a file, expected a folder")
    existing = next((p for p in [path, *path.absolute().parents] if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise ConfigError(f"{key} '{value}': '{existing}' is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} '{value}': '{existing}' is not writable")


@_os_errors_named
def check_folder_to_read(key: str, value: str) -> None:
    if "\x00" in value:
        raise ConfigError(f"{key}: contains a NUL character")
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"{key} '{value}' does not exist")
    if not path.is_dir():
        raise ConfigError(f"{key} '{value}': expected a folder, found a file")


@_os_errors_named
def check_file_or_new(key: str, value: str) -> None:
    """``value`` is a regular file, or nothing yet (it will be created)."""
    if "\x00" in value:
        raise ConfigError(f"{key}: contains a NUL character")
    path = Path(value)
    if path.exists() and not path.is_file():
        raise ConfigError(f"{key} '{value}': expected a file, found a folder or device")
    if not path.exists():
        check_folder_to_write(key, str(path.parent))


#: ... or a model of `fedgpt model pull` by its name ("smollm2-135m"), read from the cache
PULLED_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")


def is_pulled_name(path: str) -> bool:
    if not PULLED_NAME.fullmatch(path):
        return False
    try:
        return not Path(path).exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ConfigError(f"model.path '{path[:40]}...': {exc.strerror}") from None


def is_hub_id(path: str) -> bool:
    """``path`` is a hub id, ``hf:org/name``."""
    return bool(HUB_ID.fullmatch(path))


def check_paths(cfg) -> None:
    """Every path of ``cfg`` (a RunConfig) fits what it is used for."""
    check_folder_to_write("out_dir", cfg.out_dir)
    r = cfg.runtime
    if r.ledger and r.ledger_key:
        check_file_or_new("runtime.ledger_key", r.ledger_key)
    if r.receipts_dir:
        check_folder_to_write("runtime.receipts_dir", r.receipts_dir)
    if cfg.model.path and not (is_hub_id(cfg.model.path) or is_pulled_name(cfg.model.path)):
        check_folder_to_read("model.path", cfg.model.path)
    if cfg.data.path:
        check_folder_to_read("data.path", cfg.data.path)
