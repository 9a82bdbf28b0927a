"""The run ledger: a signed, hash-chained record of every round (``ledger.jsonl``).

Format (docs/ledger.md): one entry per line, each the canonical JSON of an object (keys
sorted, no spaces, ASCII only). Line 1 is the header (public key, config hash); then one
``round`` entry per round (participants, dropped clients with reasons, SHA-256 of every
update payload as it arrived, SHA-256 of the new global weights and of the server
optimiser state, epsilon spent, start/end time in UTC); a ``config`` entry where a resumed
run changed its configuration; at the end a ``model`` entry with the hashes of the saved
model and a ``final`` entry (rounds planned and completed, why the run stopped, the SHA-256
of every file the run publishes). Each participant keeps a signed receipt of the ledger's
head after each of its rounds (:meth:`Ledger.receipt`, fedgpt.federation.receipts).

* Chain: every entry's ``prev`` is the SHA-256 of the previous line's bytes (``GENESIS``,
  64 zeros, for the header), so deleting, inserting or reordering lines breaks a link.
* Signature: ``sig`` is an Ed25519 signature (RFC 8032, via ``cryptography``) over the
  canonical JSON of the entry without ``sig``; the public key is kept in the run folder
  (``ledger_public_key.pem``) and in the header, the private key outside the run folder
  (fedgpt.federation.ledger_keys).
* Hashes: a tensor is hashed as name, dtype, shape and raw bytes; a blob as its raw bytes;
  global weights as their raw float32 bytes (the flat trainable parameters).

:func:`fedgpt.federation.verify.verify_run` checks all of it against the run's
``config.toml``, last checkpoint and saved model; ``fedgpt verify RUN_DIR`` prints its
verdict.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from fedgpt.errors import RunError
from fedgpt.federation.ledger_keys import (
    PUBLIC_KEY,
    fingerprint,
    key_path,
    load_or_create,
    public_pem,
    public_raw_hex,
)
from fedgpt.files import manifest, write_atomic
from fedgpt.messages import Message

GENESIS = "0" * 64
VERSION = 1
LEDGER = "ledger.jsonl"
KINDS_BEFORE_END = ("header", "config", "round")  # what a resume keeps


# --- hashing -------------------------------------------------------------------------


def canonical(entry: Mapping) -> bytes:
    """The canonical JSON of an entry: sorted keys, no whitespace, ASCII, no NaN."""
    return json.dumps(
        entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _field(h, data: bytes | memoryview) -> None:
    """Length-prefixed, so no two different sequences of fields hash alike."""
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor's elements in row-major order (any dtype)."""
    return bytes(tensor_view(t))


def tensor_view(t: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor's elements in row-major order, without a copy when the
    tensor is contiguous in host memory (hashing reads them in place: SHA-256 runs at its
    own speed instead of behind a copy)."""
    flat = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy()).cast("B") if flat.numel() else memoryview(b"")


def _hash_tensors(h, tensors: Mapping[str, object]) -> None:
    if not isinstance(tensors, Mapping):
        _field(h, b"not a mapping: " + type(tensors).__name__.encode())
        return
    for name in sorted(tensors, key=str):
        t = tensors[name]
        _field(h, b"tensor:" + str(name).encode())
        if not isinstance(t, torch.Tensor):
            _field(h, b"not a tensor: " + type(t).__name__.encode())
            continue
        _field(h, str(t.dtype).encode())
        _field(h, json.dumps(list(t.shape)).encode())
        _field(h, tensor_view(t))


def payload_hash(msg: Message) -> str:
    """SHA-256 of a message's payloads exactly as received: each tensor by name, dtype,
    shape and raw bytes, each blob by its raw bytes (masked or encrypted ones as they
    arrived). Malformed payloads hash too (they are hashed before validation)."""
    h = hashlib.sha256(b"fedgpt/payload/v1")
    _hash_tensors(h, msg.tensors)
    blobs = msg.blobs if isinstance(msg.blobs, Mapping) else {}
    for name in sorted(blobs, key=str):
        chunks = blobs[name]
        chunks = chunks if isinstance(chunks, list | tuple) else [chunks]
        _field(h, b"blobs:" + str(name).encode())
        h.update(len(chunks).to_bytes(8, "big"))
        for c in chunks:
            _field(
                h, bytes(c) if isinstance(c, bytes | bytearray | memoryview) else repr(c).encode()
            )
    return h.hexdigest()


def weights_hash(weights: torch.Tensor) -> str:
    """SHA-256 of the raw float32 bytes of flat weights."""
    return sha256_hex(tensor_bytes(weights.to(torch.float32)))


def state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the server optimiser state tensors (by name, dtype, shape, bytes)."""
    h = hashlib.sha256(b"fedgpt/server-state/v1")
    _hash_tensors(h, state)
    return h.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """``relative/posix/path -> SHA-256`` of every file under ``folder``."""
    return manifest(folder, skip=())


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- keys (fedgpt.federation.ledger_keys) -------------------------------------------

# --- writing -------------------------------------------------------------------------


def sign(entry: Mapping, key) -> bytes:
    """The ledger line (without newline) of ``entry`` signed with ``key``."""
    body = {k: v for k, v in entry.items() if k != "sig"}
    return canonical({**body, "sig": key.sign(canonical(body)).hex()})


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")


class Ledger:
    """Appends signed, chained entries to ``RUN_DIR/ledger.jsonl``."""

    def __init__(self, path: Path, key, last: bytes | None, config_hash: str):
        self.path = path
        self.key = key
        self.last = last  # the previous line's bytes, None before the header
        self.config_hash = config_hash

    @classmethod
    def start(cls, run_dir: Path, ledger_key: str, config_hash: str, run_id: str = "") -> Ledger:
        """A new ledger signed with the key at ``runtime.ledger_key`` or in the per-user key
        store (created there if missing); the run folder gets only the public key."""
        key = load_or_create(key_path(run_dir, ledger_key))
        write_atomic(run_dir / PUBLIC_KEY, public_pem(key.public_key()))
        path = run_dir / LEDGER
        path.write_bytes(b"")
        led = cls(path, key, None, config_hash)
        header = {
            "kind": "header",
            "version": VERSION,
            "public_key": public_raw_hex(key.public_key()),
            "config_hash": config_hash,
            "created": utc_now(),
        }
        if run_id:
            header["run_id"] = run_id
        led.append(header)
        return led

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key.public_key())

    @property
    def head(self) -> str:
        """SHA-256 of the last line: it commits to every entry before it."""
        return sha256_hex(self.last or b"")

    @classmethod
    def resume(
        cls,
        run_dir: Path,
        ledger_key: str,
        config_hash: str,
        rnd: int,
        weights: torch.Tensor,
        run_id: str = "",
    ) -> Ledger | None:
        """Continue the ledger of a resumed run at round ``rnd``: entries past it (a crash
        can leave one, or half of one) are cut, the rest must verify and end with the
        checkpoint's weights; a changed configuration gets a ``config`` entry. ``None``
        when the run kept no ledger so far (it cannot start one mid-run)."""
        path = run_dir / LEDGER
        if not path.is_file():
            return cls.start(run_dir, ledger_key, config_hash, run_id) if rnd == 0 else None
        kp = key_path(run_dir, ledger_key)
        if not kp.is_file():
            raise RunError(
                f"--resume: the ledger's signing key '{kp}' is missing (set runtime.ledger_key "
                "to the key that signed this run)"
            )
        key = load_or_create(kp)
        keep: list[bytes] = []
        for raw in _lines(path.read_bytes()):
            try:
                entry = json.loads(raw)
            except ValueError:
                break
            if not isinstance(entry, dict) or entry.get("kind") not in KINDS_BEFORE_END:
                break
            if entry["kind"] == "round" and entry.get("round", 0) > rnd:
                break
            keep.append(raw)
        if not keep:
            if rnd == 0:
                return cls.start(run_dir, ledger_key, config_hash, run_id)
            raise RunError(f"--resume: the ledger '{path}' has no readable header")
        signer = json.loads(keep[0]).get("public_key")
        if signer != public_raw_hex(key.public_key()):
            raise RunError(
                f"--resume: the key at '{kp}' did not sign this ledger (fingerprint "
                f"{fingerprint(key.public_key())[:16]}...): set runtime.ledger_key to the key "
                "that did"
            )
        entries, problems = check_chain(keep, key.public_key())
        if problems:
            raise RunError(f"--resume: the ledger does not verify: {problems[0]}")
        rounds = [e for e in entries if e and e["kind"] == "round"]
        last = rounds[-1]["round"] if rounds else 0
        if last != rnd:
            raise RunError(f"--resume: the ledger ends at round {last}, the checkpoint at {rnd}")
        if rounds and rounds[-1]["global_weights"] != weights_hash(weights):
            raise RunError(
                f"--resume: the checkpoint's weights differ from round {rnd} in the ledger"
            )
        write_atomic(path, b"".join(line + b"\n" for line in keep))
        current = [e["config_hash"] for e in entries if e["kind"] in ("header", "config")][-1]
        led = cls(path, key, keep[-1], current)
        if current != config_hash:
            led.append(
                {
                    "kind": "config",
                    "config_hash": config_hash,
                    "after_round": rnd,
                    "time": utc_now(),
                }
            )
            led.config_hash = config_hash
        return led

    def append(self, entry: dict) -> dict:
        """Chain, sign and append ``entry`` (one write, then fsync)."""
        entry = {**entry, "prev": GENESIS if self.last is None else sha256_hex(self.last)}
        line = sign(entry, self.key)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.last = line
        return json.loads(line)

    def append_round(
        self,
        rnd: int,
        participants: Sequence[str] | int,
        dropped: Sequence[Mapping[str, str]],
        updates: Mapping[str, str],
        weights: torch.Tensor,
        server_state: Mapping[str, torch.Tensor],
        epsilon: float | None,
        start: str,
        end: str,
        retries: int = 0,
        cohort: str | None = None,
    ) -> dict:
        """A round entry; with ``cohort`` (a hidden cohort, :mod:`fedgpt.federation.cohort`)
        ``participants`` is a count and ``dropped`` names no client."""
        eps = None if epsilon is None else float(epsilon)
        entry = {
            "kind": "round",
            "round": rnd,
            "config_hash": self.config_hash,
            "participants": participants if isinstance(participants, int) else list(participants),
            "dropped": [dict(d) for d in dropped],
            "updates": dict(sorted(updates.items())),
            "global_weights": weights_hash(weights),
            "server_state": state_hash(server_state),
            "epsilon": eps if eps is None or math.isfinite(eps) else str(eps),
            "start": start,
            "end": end,
        }
        if retries:
            entry["retries"] = retries
        if cohort is not None:
            entry["cohort"] = cohort
        return self.append(entry)

    def append_model(self, model_dir: Path, rnd: int, weights: torch.Tensor) -> dict:
        return self.append(
            {
                "kind": "model",
                "round": rnd,
                "weights": weights_hash(weights),
                "files": file_hashes(model_dir),
                "time": utc_now(),
            }
        )

    def append_final(
        self, run_dir: Path, planned: int, completed: int, stopped: str | None
    ) -> dict:
        """The last entry: rounds planned and completed, why the run stopped early, and
        the SHA-256 of every file the run publishes (all of the run folder but the ledger,
        ``private/`` and dot-files: metrics, summary, report, model, checkpoints...)."""
        return self.append(
            {
                "kind": "final",
                "rounds_planned": planned,
                "rounds_completed": completed,
                "stopped": stopped,
                "files": published_files(run_dir),
                "time": utc_now(),
            }
        )

    def receipt(self, rnd: int, client: str, update: str | None, run_id: str) -> bytes:
        """The signed receipt a participant keeps for round ``rnd``: the ledger's head
        right after that round's entry, and the hash of the client's update as received
        (``federation.receipts``)."""
        return sign(
            {
                "kind": "receipt",
                "run_id": run_id,
                "round": rnd,
                "client": client,
                "head": self.head,
                "update": update,
                "public_key": public_raw_hex(self.key.public_key()),
            },
            self.key,
        )


def published_files(run_dir: Path) -> dict[str, str]:
    """``path -> SHA-256`` of every file of the run folder the final entry covers."""
    return {
        name: digest
        for name, digest in manifest(Path(run_dir), skip=()).items()
        if not _unpublished(name)
    }


def _unpublished(name: str) -> bool:
    parts = name.split("/")
    return (
        name in ("ledger.jsonl", "server_key.pem")
        or parts[0] == "private"
        or any(p.startswith(".") for p in parts)
    )


# --- verification --------------------------------------------------------------------


def check_chain(lines: Sequence[bytes], public_key) -> tuple[list[dict | None], list[str]]:
    """Check the lines of a ledger on their own: canonical form, signature, ``prev`` link,
    entry kinds and order, rounds 1, 2, 3, ... each under the configuration in force.
    Returns the parsed entries (``None`` where unreadable) and the problems found, each
    naming its entry (1-based line)."""
    problems: list[str] = []
    entries: list[dict | None] = []
    pub_hex = public_raw_hex(public_key)
    current_config: str | None = None
    last_round = 0
    for i, raw in enumerate(lines, 1):
        where = f"entry {i}"
        expected_prev = GENESIS if i == 1 else sha256_hex(lines[i - 2])
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            problems.append(f"{where}: unreadable ({str(exc).splitlines()[0][:80]})")
            entries.append(None)
            continue
        entries.append(entry)
        try:
            same = canonical(entry) == raw
        except ValueError:
            same = False
        if not same:
            problems.append(f"{where}: not in canonical form (altered)")
        body = {k: v for k, v in entry.items() if k != "sig"}
        try:
            public_key.verify(bytes.fromhex(str(entry.get("sig", ""))), canonical(body))
        except Exception:  # noqa: BLE001 - InvalidSignature, bad hex, NaN...
            problems.append(f"{where}: signature does not verify")
        if entry.get("prev") != expected_prev:
            problems.append(
                f"{where}: prev is not the genesis value"
                if i == 1
                else f"{where}: prev does not match the hash of entry {i - 1} "
                "(an entry was altered, deleted, inserted or reordered)"
            )
        kind = entry.get("kind")
        if i == 1 and kind != "header":
            problems.append(f"{where}: the first entry must be the header, found {kind!r}")
        if kind == "header":
            if i != 1:
                problems.append(f"{where}: a second header")
            if entry.get("public_key") != pub_hex:
                problems.append(f"{where}: header public key differs from {PUBLIC_KEY}")
            current_config = entry.get("config_hash")
        elif kind == "config":
            current_config = entry.get("config_hash")
        elif kind == "round":
            r = entry.get("round")
            if r != last_round + 1:
                problems.append(f"{where}: round {r!r}, expected {last_round + 1}")
            last_round = r if isinstance(r, int) else last_round + 1
            if entry.get("config_hash") != current_config:
                problems.append(f"{where}: config hash differs from the configuration in force")
        elif kind == "model":
            final_next = i == len(lines) - 1 and _kind_of(lines[-1]) == "final"
            if i != len(lines) and not final_next:
                problems.append(f"{where}: a model entry before the end of the ledger")
            if entry.get("round") != last_round:
                problems.append(
                    f"{where}: model of round {entry.get('round')!r}, last round is {last_round}"
                )
        elif kind == "final":
            if i != len(lines):
                problems.append(f"{where}: a final entry before the end of the ledger")
            if entry.get("rounds_completed") != last_round:
                problems.append(
                    f"{where}: final entry says {entry.get('rounds_completed')!r} rounds, "
                    f"the ledger holds {last_round}"
                )
        else:
            problems.append(f"{where}: unknown kind {kind!r}")
    return entries, problems


def _kind_of(raw: bytes):
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry.get("kind") if isinstance(entry, dict) else None
