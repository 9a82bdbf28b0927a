"""User-provided federated text data.

A client directory holds one sub-directory per client; the sub-directory's name is the
client id::

    data/
        alice/train.jsonl      {"text": "..."} per line
        alice/test.jsonl       optional
        bob/train.jsonl

or, for instruction tuning (``task.kind = "instruction"``), ``{"prompt": "...", "response":
"..."}`` per line (every line of a client's files both, as non-empty strings).

Blank lines are skipped; ``train.jsonl`` must hold at least one record. Without
``test.jsonl`` a client's ``train.jsonl`` records are split in order, the first
``train_fraction`` for training and the rest for testing (see
:func:`~fedgpt.data.clients.split_lines`). Records are joined with ``"\\n"``.

Every problem raises :class:`~fedgpt.errors.DataError` with a one-line message naming the
path (and line) and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedgpt.data.clients import ClientText, split_lines
from fedgpt.errors import DataError

__all__ = ["load_client_dir", "load_text_file", "read_jsonl_texts"]

TRAIN_FILE = "train.jsonl"
TEST_FILE = "test.jsonl"
MAX_FILE_BYTES = 4 << 30  # a bigger text file is refused rather than read into memory


def _describe(value: object) -> str:
    """A short description of a JSON value for error messages."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def read_jsonl_texts(path: Path) -> list[str]:
    """The ``text`` field of every record of a JSON-lines file, in order.

    Blank lines are skipped; any other line must be a JSON object with a string ``text``.
    """
    raw = _read_regular(path)
    texts = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        expected = f"{path}:{lineno}: expected a JSON object with a string 'text' field, got"
        try:
            record = json.loads(line)
        except UnicodeDecodeError:
            raise DataError(f"{expected} bytes that are not UTF-8") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{expected} invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(f"{expected} JSON nested too deep") from None
        if not isinstance(record, dict):
            raise DataError(f"{expected} {type(record).__name__} {_describe(record)}")
        if "text" not in record:
            keys = ", ".join(repr(k) for k in list(record)[:5])[:60] or "none"
            raise DataError(f"{expected} an object without 'text' (keys: {keys})")
        if not isinstance(record["text"], str):
            raise DataError(f"{expected} 'text' = {_describe(record['text'])}")
        if not _valid_unicode(record["text"]):
            raise DataError(f"{expected} text with a lone surrogate (not valid Unicode)")
        texts.append(record["text"])
    return texts


def read_jsonl_pairs(path: Path) -> list[tuple[str, str]]:
    """The (``prompt``, ``response``) of every record of a JSON-lines file of instruction
    data, in order; blank lines are skipped, every other line must hold both as strings."""
    pairs = []
    for lineno, line in enumerate(_read_regular(path).splitlines(), start=1):
        if not line.strip():
            continue
        expected = f"{path}:{lineno}: expected a JSON object with string 'prompt' and 'response'"
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise DataError(f"{expected}, got a line that is not a JSON object") from None
        if not isinstance(record, dict):
            raise DataError(f"{expected}, got {type(record).__name__} {_describe(record)}")
        for key in ("prompt", "response"):
            value = record.get(key)
            if not isinstance(value, str) or not value.strip() or not _valid_unicode(value):
                raise DataError(f"{expected}; '{key}' = {_describe(value)}")
        pairs.append((record["prompt"], record["response"]))
    return pairs


def _is_instructions(path: Path) -> bool:
    """Whether the first record of a JSON-lines file has a ``prompt`` (instruction data)."""
    for line in _read_regular(path).splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                return False
            return isinstance(record, dict) and "prompt" in record and "text" not in record
    return False


def _instruction_client(sub: Path, train_path: Path, test_path: Path, train_fraction: float):
    from fedgpt.data.records import Instructions

    pairs = read_jsonl_pairs(train_path)
    if not pairs:
        raise DataError(f"{train_path}: expected at least one prompt/response line, found none")
    if test_path.exists() or test_path.is_symlink():
        train, test = pairs, read_jsonl_pairs(test_path)
    else:
        train, test = split_lines(pairs, train_fraction)
    part = lambda ps: Instructions(tuple(p for p, _ in ps), tuple(r for _, r in ps))  # noqa: E731
    return ClientText(sub.name, part(train), part(test))


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file (never a device, FIFO or folder: those are refused
    before they are opened, so nothing blocks or reads forever)."""
    import stat

    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket"
        raise DataError(f"{path}: not a regular file ({kind})")
    if st.st_size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {st.st_size:,} bytes, more than {MAX_FILE_BYTES:,}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def load_client_dir(path: str | Path, train_fraction: float = 0.8) -> list[ClientText]:
    """Load one :class:`ClientText` per sub-directory of ``path``, sorted by client id.

    Hidden sub-directories (name starting with ``"."``) are ignored.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: client directory does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: expected a directory with one sub-directory per client")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(
            f"{root}: expected one sub-directory per client (each with {TRAIN_FILE}), found none"
        )
    clients = []
    for sub in subdirs:
        if not _valid_unicode(sub.name):
            raise DataError(f"{root}: client folder name {sub.name!r} is not valid UTF-8")
        train_path, test_path = sub / TRAIN_FILE, sub / TEST_FILE
        if not train_path.exists() and not train_path.is_symlink():
            raise DataError(f"{sub}: client directory has no {TRAIN_FILE}")
        if _is_instructions(train_path):
            clients.append(_instruction_client(sub, train_path, test_path, train_fraction))
            continue
        train = read_jsonl_texts(train_path)
        if not train:
            raise DataError(f'{train_path}: expected at least one {{"text": ...}} line, found none')
        if test_path.exists() or test_path.is_symlink():
            test = read_jsonl_texts(test_path)
        else:
            train, test = split_lines(train, train_fraction)
        clients.append(ClientText(sub.name, "\n".join(train), "\n".join(test)))
    return clients


def load_text_file(path: str | Path) -> ClientText:
    """Load a plain UTF-8 text file for evaluation: all of it is ``test``, ``train`` is empty.

    The client id is the file's stem (``eval/poems.txt`` -> ``poems``).
    """
    file = Path(path)
    if not file.exists():
        raise DataError(f"{file}: text file does not exist")
    if not file.is_file():
        found = "a directory" if file.is_dir() else "something that is not a regular file"
        raise DataError(f"{file}: expected a UTF-8 text file, found {found}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{file}: expected UTF-8 text, invalid byte at offset {exc.start}"
        ) from None
    except OSError as exc:
        raise DataError(f"{file}: cannot read file ({exc.strerror or exc})") from None
    return ClientText(client_id=file.stem, train="", test=text)
