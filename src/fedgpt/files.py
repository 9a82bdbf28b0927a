"""Crash-safe files: what a run writes survives a crash or a power cut whole or not at all.

* :func:`write_atomic` — the bytes go to a temporary name in the same folder, are fsynced,
  renamed over the target, and the folder is fsynced (POSIX rename is atomic, so a reader
  sees the old file or the new one, never a mix);
* :func:`append_line` — one line appended and fsynced (``metrics.jsonl``; a crash can
  leave only its *last* line torn, which :func:`read_jsonl` cuts back);
* :func:`replace_dir` — a folder built under a temporary name (a checkpoint, the saved
  model), its files fsynced, renamed into place, the parent fsynced;
* :func:`sha256_file` and :func:`manifest` — the hashes a checkpoint's ``manifest.json``
  keeps, so a torn or corrupted checkpoint is recognised before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from fedgpt.errors import RunError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically and durably."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def append_line(path: str | Path, line: str) -> None:
    """Append one line (``line`` without its newline) and fsync it."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> tuple[list[dict], bool]:
    """(rows, whether a torn last line was cut off). A line that is not JSON anywhere but
    at the end is damage a crash cannot cause: a one-line ``RunError``."""
    path = Path(path)
    if not path.is_file():
        return [], False
    lines = path.read_bytes().split(b"\n")
    rows = []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row, dict):
                raise ValueError("not an object")
            rows.append(row)
        except (ValueError, UnicodeDecodeError):
            if i == len(lines):  # the last line, unterminated: torn by a crash
                return rows, True
            raise RunError(f"{path.name} line {i}: not a JSON object (edited or damaged)") from None
    return rows, False


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(folder: Path, skip: tuple[str, ...] = ("manifest.json",)) -> dict[str, str]:
    """{relative posix path: SHA-256} of every file under ``folder`` (but ``skip``)."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(d)


def replace_dir(tmp: Path, final: Path) -> Path:
    """Move the finished folder ``tmp`` to ``final`` (replacing it) durably."""
    fsync_tree(tmp)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def fedgpt_home() -> Path:
    """``$FEDGPT_HOME``, else ``$XDG_DATA_HOME/fedgpt``, else ``~/.local/share/fedgpt``: the
    per-user folder of the ledger key store, receipts, node state and the model cache."""
    if os.environ.get("FEDGPT_HOME"):
        return Path(os.environ["FEDGPT_HOME"])
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "fedgpt"
