"""A SuperNode's own record of what its clients carry between rounds, on its own disk.

Flower's ``context.state`` belongs to one Flower run: a restarted server (``--resume``)
starts a new Flower run and the node's DP-SGD accounting, local-DP release counts,
optimiser memory and FedMD models would be gone. So after every message batch the node
also writes its clients' state (:meth:`fedgpt.federation.client_app.ClientApp.state_dict`)
to::

    STATE_DIR/<run_id>/<node key>/round_<r>.safetensors

``run_id`` is the run folder's identity (``RUN_DIR/run.json``), sent in the hello, so it
survives any restart of the server, the SuperLink or the node; ``node key`` names the set
of clients the node serves. ``STATE_DIR`` is the node's ``--node-config state-dir``, by
default ``$FEDGPT_HOME/nodes``. When the server resumes after round ``R`` (it says so in
the hello), the node takes the newest snapshot of a round ``<= R``: the state its clients
had when round ``R`` ended, so the resumed run continues exactly as the uninterrupted one.
If the nodes had already trained in round ``R + 1`` (the server died mid-round), those
releases left the node: unless ``privacy.reproducible_noise`` (a redone round then releases
the very same values), the privacy parts are charged with them
(:func:`fedgpt.client.algorithm.charge_unseen`), so no restart resets a budget.
Each file is written atomically; the newest ``keep`` are kept.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load, save

from fedgpt.files import write_atomic

_ROUND = re.compile(r"round_(\d{6,})\.safetensors")
_HEX = re.compile(r"[0-9a-f]{32}")


class NodeState:
    def __init__(self, root: str | Path, run_id: str, clients: Sequence[str], keep: int = 3):
        if not _HEX.fullmatch(run_id):
            raise ValueError(f"run id {run_id!r} is not 32 hex digits")
        key = hashlib.sha256("\n".join(sorted(clients)).encode()).hexdigest()[:16]
        self.folder = Path(root) / run_id / key
        self.keep = max(int(keep), 1)

    def _rounds(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = ((_ROUND.fullmatch(p.name), p) for p in self.folder.iterdir())
        return sorted((int(m.group(1)), p) for m, p in found if m)

    def save(self, rnd: int, state: Mapping[str, bytes]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        raw = {k: torch.frombuffer(bytearray(v), dtype=torch.uint8) if v else
               torch.zeros(0, dtype=torch.uint8) for k, v in state.items()}  # fmt: skip
        write_atomic(self.folder / f"round_{rnd:06d}.safetensors", save(raw))
        for _, old in self._rounds()[: -self.keep]:
            old.unlink(missing_ok=True)

    def load(self, up_to: int) -> dict[str, bytes] | None:
        """The newest snapshot of a round ``<= up_to`` that reads, or None."""
        return self._newest(lambda rnd: rnd <= up_to)

    def after(self, up_to: int) -> list[dict[str, bytes]]:
        """Every snapshot of a round ``> up_to`` that reads, oldest round first: what the
        clients had released in rounds the server now redoes. All of them, not the newest
        round's only: after a second restart from an older checkpoint, a higher round's
        snapshot may be of an abandoned attempt while a lower one holds the later charge."""
        out = []
        for rnd, path in self._rounds():
            if rnd > up_to:
                try:
                    out.append({k: v.numpy().tobytes() for k, v in load(path.read_bytes()).items()})
                except Exception:  # noqa: BLE001 - a torn snapshot: the others still count
                    continue
        return out

    def _newest(self, wanted) -> dict[str, bytes] | None:
        for rnd, path in reversed(self._rounds()):
            if not wanted(rnd):
                continue
            try:
                return {k: v.numpy().tobytes() for k, v in load(path.read_bytes()).items()}
            except Exception:  # noqa: BLE001 - a torn snapshot: take the one before
                continue
        return None
