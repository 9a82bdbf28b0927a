"""Hidden cohorts: under a mechanism whose ε counts on amplification by sampling (central
and distributed DP, ``PrivacyMechanism.secret_sampling``), who took part in a round must
not be written in the clear where a user of the model can read it.

Such a round's ``metrics.jsonl`` row and ledger entry carry only counts, the reasons of
dropouts with every client id replaced by ``(hidden)``, and a salted commitment

    cohort = SHA-256(salt ‖ canonical JSON of {participants, dropped, updates}),

salt 32 bytes from the OS, fresh per round. The opening (salt and the lists) goes to
``private/cohorts.jsonl`` in the run folder, which stays with the operator of the server
(as ``checkpoints/`` does: its sampling key gives the cohorts back):
``fedgpt verify`` checks every commitment against it when it is there, and the operator
can open one round to an auditor (or a client its own rounds) without revealing others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedgpt.federation.ledger import canonical, sha256_hex

HIDDEN = "(hidden)"
OPENINGS = Path("private") / "cohorts.jsonl"


def commitment(salt_hex: str, opened: Mapping) -> str:
    return sha256_hex(bytes.fromhex(salt_hex) + canonical(dict(opened)))


def scrub(dropped: Sequence[Mapping[str, str]], ids: set[str]) -> list[dict[str, str]]:
    """Dropout reasons without the names of ``ids`` (a round's cohort)."""
    out = []
    for d in dropped:
        reason = d.get("reason", "")
        for cid in sorted(ids, key=len, reverse=True):
            reason = reason.replace(cid, HIDDEN)
        who = d.get("client", "")
        out.append({"client": who if who == "*" else HIDDEN, "reason": reason})
    return out


def conceal(run_dir: Path, rnd: int, participants, dropped, updates) -> dict:
    """Append the opening of round ``rnd`` to ``private/cohorts.jsonl`` (fsynced) and
    return what the public artefacts carry: participants (a count), dropped (scrubbed),
    cohort (the commitment)."""
    opened = {"participants": list(participants), "dropped": [dict(d) for d in dropped],
              "updates": dict(sorted(updates.items()))}  # fmt: skip
    salt = os.urandom(32).hex()
    path = run_dir / OPENINGS
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"round": rnd, "salt": salt, **opened}, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    ids = set(opened["participants"]) | {d.get("client", "") for d in opened["dropped"]}
    return {"participants": len(opened["participants"]),
            "dropped": scrub(opened["dropped"], ids - {"*", ""}),
            "cohort": commitment(salt, opened)}  # fmt: skip


def check_openings(run_dir: Path, rounds: list[dict]) -> list[str]:
    """Problems of the commitments in ledger ``rounds`` against ``private/cohorts.jsonl``
    (none when the run hid no cohort; the last opening of a round counts, as a resumed run
    may have opened a round it then ran again)."""
    hidden = [e for e in rounds if "cohort" in e]
    if not hidden:
        return []
    path = run_dir / OPENINGS
    if not path.is_file():
        return []  # a model user's copy: the openings stay with the server's operator
    opens: dict[int, dict] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            o = json.loads(line)
            opens[int(o["round"])] = o
        except (ValueError, KeyError, TypeError):
            return [f"{OPENINGS} line {i}: not an opening"]
    problems = []
    for e in hidden:
        o = opens.get(e["round"])
        keys = ("participants", "dropped", "updates")
        if o is None or commitment(o["salt"], {k: o[k] for k in keys}) != e["cohort"]:
            problems.append(f"round {e['round']}: the cohort does not open to {OPENINGS}")
    return problems
