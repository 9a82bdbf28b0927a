"""Receipts: every participant keeps part of the record.

After each round's entry is in the ledger and the round's checkpoint is on disk, the
server sends each client that took part a *receipt*, signed with the ledger key::

    {kind: "receipt", run_id, round, client, head, update, public_key, sig}

``head`` is the SHA-256 of that round's ledger line, which (through ``prev``) commits to
every entry before it; ``update`` is the hash of the client's update as the server
received it. The client checks the signature, pins the key of the first receipt of a run
(a later receipt under another key is kept, and flagged), adds the hash of what it really
sent, and appends the line to its own disk (``RECEIPTS/<run_id>/<client>/receipts.jsonl``;
in-process ``runtime.receipts_dir``, over Flower the node's ``receipts-dir``, both by
default ``$FEDGPT_HOME/receipts``).

``fedgpt verify RUN --receipts DIR`` (:func:`check_receipts`) then holds the run folder
to them: a server that rewrites, truncates or re-signs its history — even with its own
key — no longer has the line a receipt names, and one honest participant's receipts show
it. A receipt that does not verify under its own key is no evidence and is reported as
such; so is one of another run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from fedgpt.federation.ledger import canonical, sha256_hex
from fedgpt.files import append_line
from fedgpt.messages import Message

RECEIPT = "ledger/receipt"
FILE = "receipts.jsonl"
_SAFE = re.compile(r"[A-Za-z0-9._-]{1,100}")


def _folder_name(name: str) -> str:
    if _SAFE.fullmatch(name) and name not in (".", ".."):
        return name
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60].strip(".")
    return f"{readable}-{sha256_hex(name.encode('utf-8', 'replace'))[:12]}"


def check_signature(receipt: dict) -> bool:
    """Whether ``receipt`` verifies under the public key it names."""
    from fedgpt.federation.ledger_keys import public_from_hex

    body = {k: v for k, v in receipt.items() if k != "sig"}
    try:
        public_from_hex(str(receipt["public_key"])).verify(
            bytes.fromhex(str(receipt["sig"])), canonical(body)
        )
    except Exception:  # noqa: BLE001 - bad hex, bad key, InvalidSignature, missing field
        return False
    return True


class ReceiptBook:
    """A client's receipts on its own disk, under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, run_id: str, client: str) -> Path:
        return self.root / _folder_name(run_id) / _folder_name(client) / FILE

    def keep(self, client: str, raw: bytes, sent: str | None) -> Message:
        """Check and store one receipt for ``client``; ``sent`` is the hash of the update
        the client sent that round (None if it kept none). The reply says what was wrong."""
        try:
            receipt = json.loads(raw)
        except ValueError:
            receipt = None
        if not isinstance(receipt, dict) or receipt.get("kind") != "receipt":
            return Message("ledger/receipt/result", {"kept": False, "problem": "not a receipt"})
        problems = []
        if not check_signature(receipt):
            problems.append("signature does not verify")
        if receipt.get("client") != client:
            problems.append("made out to another client")
        path = self.path(str(receipt.get("run_id", "")), client)
        earlier = read_receipts(path)
        if earlier and earlier[0]["receipt"].get("public_key") != receipt.get("public_key"):
            problems.append("signed with another key than this run's first receipt")
        if sent is not None and receipt.get("update") not in (None, sent):
            problems.append("the update hash is not of the update this client sent")
        path.parent.mkdir(parents=True, exist_ok=True)
        line = {"receipt": receipt, "sent": sent, "problems": problems}
        append_line(path, json.dumps(line, sort_keys=True))
        return Message(
            "ledger/receipt/result",
            {"kept": True, "problem": "; ".join(problems)[:300]},
        )


def read_receipts(path: Path) -> list[dict]:
    """The lines of one receipts file (a torn last line left out)."""
    from fedgpt.files import read_jsonl

    try:
        rows, _ = read_jsonl(path)
    except Exception:  # noqa: BLE001 - a damaged file holds no usable receipts
        return []
    return [r for r in rows if isinstance(r.get("receipt"), dict)]


def receipt_files(dirs: Iterable[str | Path]) -> list[Path]:
    """Every ``receipts.jsonl`` under the given folders (or the files themselves)."""
    found: list[Path] = []
    for d in map(Path, dirs):
        found += [d] if d.is_file() else sorted(d.rglob(FILE))
    return found


def check_receipts(
    files: Sequence[Path], run_id: str | None, lines: Sequence[bytes], entries: Sequence
) -> tuple[int, list[str], list[str]]:
    """Hold the ledger to the receipts: (receipts checked, problems, notes). A problem is a
    receipt of this run that verifies but that the ledger contradicts; a note, a receipt
    that is no evidence (another run, a bad signature)."""
    by_round = {
        e["round"]: (i, e)
        for i, e in enumerate(entries)
        if isinstance(e, dict) and e.get("kind") == "round" and isinstance(e.get("round"), int)
    }
    header = entries[0] if entries and isinstance(entries[0], dict) else {}
    checked, problems, notes = 0, [], []
    for path in files:
        for row in read_receipts(path):
            r = row["receipt"]
            who = f"receipt of {r.get('client')!r} for round {r.get('round')!r} ({path})"
            if run_id and r.get("run_id") != run_id:
                notes.append(f"{who}: of another run, ignored")
                continue
            if not check_signature(r):
                notes.append(f"{who}: its signature does not verify, no evidence")
                continue
            checked += 1
            problems += [f"{who}: {p}" for p in _contradictions(r, by_round, header, lines)]
    return checked, problems, notes


def _contradictions(r: dict, by_round: dict, header: dict, lines: Sequence[bytes]) -> list[str]:
    out = []
    if r.get("public_key") != header.get("public_key"):
        out.append("the ledger is signed with another key than this receipt (re-signed)")
    found = by_round.get(r.get("round"))
    if found is None:
        return [*out, "the ledger has no such round (history cut short)"]
    i, entry = found
    if sha256_hex(lines[i]) != r.get("head"):
        out.append("the ledger's entry for this round differs from the one receipted (rewritten)")
    updates = entry.get("updates") or {}
    if updates and r.get("update") is not None and updates.get(r.get("client")) != r["update"]:
        out.append("the ledger records another update for this client")
    return out
