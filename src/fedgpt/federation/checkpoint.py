"""Round checkpoints: global weights, server-optimiser state, RNG state and round number.

Layout: ``checkpoints/round_000012/{weights.safetensors, server_state.safetensors,
state.json}``. Every random draw of a round is keyed by (seed, round, client), so the
seed and the next round number determine all future randomness; the torch global RNG
state is saved as well. Files are written to a temporary folder, fsynced with a
``manifest.json`` of their SHA-256, and the folder is renamed into place and its parent
fsynced (:mod:`fedgpt.files`). Resume takes the newest checkpoint whose manifest verifies
and that loads (:func:`usable_checkpoint`), and says which newer ones it skipped and why.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedgpt.errors import RunError
from fedgpt.files import manifest, replace_dir, sha256_file, write_atomic


@dataclass
class Checkpoint:
    round: int
    weights: torch.Tensor
    server_state: dict[str, torch.Tensor]
    meta: dict
    clients: dict[str, bytes] = field(default_factory=dict)  # ClientApp.state_dict()


def _dir(root: Path, rnd: int) -> Path:
    return root / f"round_{rnd:06d}"


def save_checkpoint(root: Path, ckpt: Checkpoint, keep: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = _dir(root, ckpt.round)
    tmp = root / f".tmp_round_{ckpt.round:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({"weights": ckpt.weights.contiguous()}, tmp / "weights.safetensors")
    state = {k: v.contiguous() for k, v in ckpt.server_state.items()}
    state["torch_rng_state"] = torch.get_rng_state()
    save_file(state, tmp / "server_state.safetensors")
    if ckpt.clients:  # what the in-process clients carry between rounds, as bytes
        raw = {k: torch.frombuffer(bytearray(v), dtype=torch.uint8) if v else torch.zeros(0,
               dtype=torch.uint8) for k, v in ckpt.clients.items()}  # fmt: skip
        save_file(raw, tmp / CLIENTS)
    (tmp / "state.json").write_text(json.dumps({"round": ckpt.round, **ckpt.meta}, indent=2))
    write_atomic(tmp / "manifest.json", json.dumps(manifest(tmp), indent=2))
    replace_dir(tmp, final)
    for old in sorted(root.glob("round_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    found = sorted(p for p in root.glob("round_*") if (p / "state.json").is_file())
    return found[-1] if found else None


def damage(path: Path) -> str | None:
    """Why checkpoint folder ``path`` cannot be trusted (a file missing, or not the one its
    manifest hashed), or None."""
    listed = path / "manifest.json"
    if not listed.is_file():  # written before manifests: its files must at least exist
        missing = [n for n in FILES if not (path / n).is_file()]
        return f"{missing[0]} is missing" if missing else None
    try:
        hashes = json.loads(listed.read_text())
    except (OSError, ValueError):
        return "manifest.json is unreadable"
    for name in [*FILES, *([CLIENTS] if CLIENTS in hashes else [])]:
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if hashes.get(name) != sha256_file(f):
            return f"{name} differs from its manifest (torn or corrupted)"
    return None


def usable_checkpoint(root: Path) -> tuple[Checkpoint | None, Path | None, list[str]]:
    """The newest checkpoint under ``root`` that verifies and loads: (checkpoint, its
    folder, one line per newer one skipped with the reason)."""
    skipped = []
    for path in sorted(root.glob("round_*"), reverse=True):
        why = damage(path)
        if why is None:
            try:
                return load_checkpoint(path), path, skipped
            except RunError as exc:
                why = str(exc)
        skipped.append(f"skipped checkpoint {path.name}: {why}")
    return None, None, skipped


FILES = ("weights.safetensors", "server_state.safetensors", "state.json")
CLIENTS = "client_state.safetensors"


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        meta = json.loads((path / "state.json").read_text())
        weights = load_file(path / "weights.safetensors")["weights"]
        state = load_file(path / "server_state.safetensors")
        raw = load_file(path / CLIENTS) if (path / CLIENTS).is_file() else {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        why = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise RunError(f"checkpoint '{path}' is unreadable: {why}") from None
    rng = state.pop("torch_rng_state", None)
    if rng is not None:
        torch.set_rng_state(rng)
    clients = {k: v.numpy().tobytes() for k, v in raw.items()}
    return Checkpoint(int(meta.pop("round")), weights, state, meta, clients)
