"""Checking a run's ledger (``fedgpt verify RUN_DIR``): the hash chain, every Ed25519
signature, consecutive rounds, the config hash against ``config.toml``, and that the last
checkpoint and the saved model are the ledger's last round (format: federation.ledger,
docs/ledger.md). Every problem is reported with its 1-based entry (line) number."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedgpt.errors import RunError
from fedgpt.federation.cohort import check_openings
from fedgpt.federation.ledger import (
    LEDGER,
    PUBLIC_KEY,
    _lines,
    check_chain,
    file_hashes,
    load_public_key,
    sha256_hex,
    state_hash,
    weights_hash,
)


@dataclass
class Verdict:
    rounds: int = 0
    entries: int = 0
    finished: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def saved_trainable_weights(model_dir: Path) -> torch.Tensor:
    """The saved model's trainable weights flattened as in training (``named_parameters``
    order): every parameter, or for a LoRA run the adapters in ``model/adapter``."""
    from fedgpt.models.build import load_pretrained

    if not (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file():
        from fedgpt.models.adapter import load_plain_weights  # a plain nn.Module's weights

        return load_plain_weights(model_dir)
    model = load_pretrained(model_dir).model
    if (model_dir / "adapter").is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, model_dir / "adapter", is_trainable=True)
    return torch.cat(
        [p.detach().reshape(-1).float() for _, p in model.named_parameters() if p.requires_grad]
    )


def _ledger_enabled(cfg_path: Path) -> bool:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        runtime = tomllib.loads(cfg_path.read_text()).get("runtime", {})
    except (OSError, ValueError):
        return True
    return bool(runtime.get("ledger", True))


def verify_run(run_dir: str | Path, check_model: bool = True) -> Verdict:
    """Check a run folder's ledger: chain, signatures, rounds, config hash against
    ``config.toml``, last round against the last checkpoint (weights, optimiser state),
    model entry against ``model/`` (file hashes and trainable weights). Raises
    ``RunError`` when ``run_dir`` is not a run folder or kept no ledger."""
    from safetensors.torch import load_file

    from fedgpt.federation.checkpoint import latest_checkpoint

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise RunError(f"'{run_dir}' is not a run folder (no config.toml)")
    v = Verdict()
    path = run_dir / LEDGER
    if not path.is_file():
        if not _ledger_enabled(cfg_path):
            raise RunError(f"run '{run_dir}' kept no ledger (runtime.ledger = false)")
        v.problems.append(f"{LEDGER}: missing")
        return v
    try:
        public_key = load_public_key(run_dir / PUBLIC_KEY)
    except (OSError, ValueError, TypeError) as exc:
        v.problems.append(f"{PUBLIC_KEY}: unreadable ({str(exc).splitlines()[0][:80]})")
        return v
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        v.problems.append(f"entry {len(_lines(data))}: not terminated by a newline (cut short?)")
    lines = _lines(data)
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            v.problems.append(f"entry {i}: empty line")
    entries, problems = check_chain(lines, public_key)
    v.problems += problems
    v.entries = len(lines)
    if not lines:
        v.problems.append(f"{LEDGER}: empty")
        return v
    configs = [e.get("config_hash") for e in entries if e and e.get("kind") in ("header", "config")]
    if not configs or configs[-1] != sha256_hex(cfg_path.read_bytes()):
        v.problems.append("config.toml: its hash differs from the ledger's configuration")
    rounds = [e for e in entries if e and e.get("kind") == "round"]
    v.rounds = rounds[-1].get("round", 0) if rounds else 0
    if rounds:
        _check_checkpoint(run_dir, rounds[-1], v, latest_checkpoint, load_file)
    v.problems += check_openings(run_dir, rounds)
    model = entries[-1] if entries[-1] and entries[-1].get("kind") == "model" else None
    v.finished = model is not None
    if model is None:
        if (run_dir / "summary.json").is_file() or (run_dir / "model").is_dir():
            v.problems.append("model: the run saved a model but the ledger has no model entry")
    elif check_model:
        _check_model(run_dir / "model", model, rounds[-1] if rounds else None, v)
    return v


def _check_checkpoint(run_dir: Path, last: dict, v: Verdict, latest_checkpoint, load_file):
    ck = latest_checkpoint(run_dir / "checkpoints")
    if ck is None:
        v.problems.append("checkpoint: none found")
        return
    try:
        rnd = int(json.loads((ck / "state.json").read_text())["round"])
        weights = load_file(ck / "weights.safetensors")["weights"]
        state = load_file(ck / "server_state.safetensors")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a finding
        v.problems.append(f"checkpoint {ck.name}: unreadable ({str(exc).splitlines()[0][:80]})")
        return
    state.pop("torch_rng_state", None)
    if rnd != last.get("round"):
        v.problems.append(
            f"checkpoint: last checkpoint is round {rnd}, ledger ends at {last.get('round')}"
        )
    if weights_hash(weights) != last.get("global_weights"):
        v.problems.append(f"checkpoint {ck.name}: weights differ from the ledger's last round")
    if state_hash(state) != last.get("server_state"):
        v.problems.append(
            f"checkpoint {ck.name}: server state differs from the ledger's last round"
        )


def _check_model(model_dir: Path, entry: dict, last: dict | None, v: Verdict) -> None:
    if not model_dir.is_dir():
        v.problems.append("model: model/ is missing")
        return
    want, have = entry.get("files", {}), file_hashes(model_dir)
    for name in sorted(set(want) | set(have)):
        if name not in have:
            v.problems.append(f"model: {name} is missing")
        elif name not in want:
            v.problems.append(f"model: {name} is not in the ledger")
        elif want[name] != have[name]:
            v.problems.append(f"model: {name} differs from the ledger")
    if last is not None and entry.get("weights") != last.get("global_weights"):
        v.problems.append("model: the model entry's weights differ from the last round's")
    try:
        saved = saved_trainable_weights(model_dir)
    except Exception as exc:  # noqa: BLE001 - an unloadable model is a finding
        v.problems.append(f"model: cannot be loaded ({str(exc).splitlines()[0][:80]})")
        return
    if weights_hash(saved) != entry.get("weights"):
        v.problems.append("model: saved trainable weights differ from the ledger")
