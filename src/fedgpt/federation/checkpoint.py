"""Round checkpoints: global weights, server-optimiser state, RNG state and round number.

Layout: ``checkpoints/round_000012/{weights.safetensors, server_state.safetensors,
state.json}``. Every random draw of a round is keyed by (seed, round, client), so the
seed and the next round number determine all future randomness; the torch global RNG
state is saved as well. Files are written to a temporary folder and renamed, so a crash
never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedgpt.errors import RunError


@dataclass
class Checkpoint:
    round: int
    weights: torch.Tensor
    server_state: dict[str, torch.Tensor]
    meta: dict


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
    (tmp / "state.json").write_text(json.dumps({"round": ckpt.round, **ckpt.meta}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("round_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    found = sorted(p for p in root.glob("round_*") if (p / "state.json").is_file())
    return found[-1] if found else None


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        meta = json.loads((path / "state.json").read_text())
        weights = load_file(path / "weights.safetensors")["weights"]
        state = load_file(path / "server_state.safetensors")
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"checkpoint '{path}' is unreadable: {exc}") from None
    rng = state.pop("torch_rng_state", None)
    if rng is not None:
        torch.set_rng_state(rng)
    return Checkpoint(round=int(meta.pop("round")), weights=weights, server_state=state, meta=meta)
