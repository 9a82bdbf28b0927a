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
    _lines,
    check_chain,
    file_hashes,
    published_files,
    sha256_hex,
    state_hash,
    weights_hash,
)
from fedgpt.federation.ledger_keys import PUBLIC_KEY, fingerprint, load_public_key


@dataclass
class Verdict:
    rounds: int = 0
    entries: int = 0
    finished: bool = False  # a final entry closes the ledger
    fingerprint: str = ""  # of the key the ledger verifies under
    pinned: bool = False  # that key is the one the verifier pinned
    receipts: int = 0  # receipts held against the ledger
    planned: int | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what verify could not check

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


def verify_run(
    run_dir: str | Path,
    check_model: bool = True,
    pinned: str | None = None,
    receipts: list[Path] | tuple = (),
    allow_incomplete: bool = False,
) -> Verdict:
    """Check a run folder's ledger: chain, signatures, rounds, config hash against
    ``config.toml``, last round against the last checkpoint (weights, optimiser state),
    model entry against ``model/`` (file hashes and trainable weights), the final entry
    against every published file; the key against ``pinned`` (a fingerprint) and the
    ledger against the participants' ``receipts`` files. A ledger without its final entry
    is a problem unless ``allow_incomplete``. Raises ``RunError`` when ``run_dir`` is not
    a run folder or kept no ledger."""
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
    v.fingerprint = fingerprint(public_key)
    if pinned is not None:
        v.pinned = v.fingerprint == pinned
        if not v.pinned:
            v.problems.append(
                f"key: the ledger is signed by {v.fingerprint[:16]}..., not by the pinned key "
                f"{pinned[:16]}... (re-signed or another signer)"
            )
    else:
        v.notes.append(
            "no key pinned (--public-key or --fingerprint): this checks only that the folder "
            "agrees with itself; whoever can write it could have re-signed everything"
        )
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
    tail = [e for e in entries[-2:] if e]
    model = next((e for e in tail if e.get("kind") == "model"), None)
    final = tail[-1] if tail and tail[-1].get("kind") == "final" else None
    v.finished, v.planned = final is not None, _planned_rounds(cfg_path)
    if model is None:
        if (run_dir / "summary.json").is_file() or (run_dir / "model").is_dir():
            v.problems.append("model: the run saved a model but the ledger has no model entry")
    elif check_model:
        _check_model(run_dir / "model", model, rounds[-1] if rounds else None, v)
    if final is not None:
        _check_final(run_dir, final, v)
    else:
        why = (
            f"incomplete: the ledger has no final entry ({v.rounds} round(s) recorded, the "
            f"configuration plans {v.planned}); the rounds after the last entry, if any, "
            "cannot be known from this folder"
        )
        (v.notes if allow_incomplete else v.problems).append(why)
    if receipts:
        from fedgpt.federation.receipts import check_receipts

        run_id = entries[0].get("run_id") if entries and entries[0] else None
        v.receipts, found, notes = check_receipts(receipts, run_id, lines, entries)
        v.problems += found
        v.notes += notes
    else:
        v.notes.append("no receipts given (--receipts): a history rewritten with the key "
                       "itself would not be seen")  # fmt: skip
    return v


def _planned_rounds(cfg_path: Path) -> int | None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        rounds = tomllib.loads(cfg_path.read_text()).get("federation", {}).get("rounds")
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return rounds if isinstance(rounds, int) else None


def _check_final(run_dir: Path, final: dict, v: Verdict) -> None:
    """The final entry against the configuration and every file the run publishes."""
    planned, done = final.get("rounds_planned"), final.get("rounds_completed")
    if v.planned is not None and planned != v.planned:
        v.problems.append(f"final: {planned!r} rounds planned, config.toml plans {v.planned}")
    if isinstance(planned, int) and isinstance(done, int) and done < planned:
        if not final.get("stopped"):
            v.problems.append(f"final: {done} of {planned} rounds and no reason for stopping")
    want = final.get("files") if isinstance(final.get("files"), dict) else {}
    v.problems += compare_files("final", want, published_files(run_dir), "the final entry")


def compare_files(what: str, want: dict, have: dict, listed: str) -> list[str]:
    """One problem per file missing, added or changed against the hashes ``listed``."""
    problems = []
    for name in sorted(set(want) | set(have)):
        if name not in have:
            problems.append(f"{what}: {name} is missing")
        elif name not in want:
            problems.append(f"{what}: {name} is not in {listed}")
        elif want[name] != have[name]:
            problems.append(f"{what}: {name} differs from {listed}")
    return problems


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
    v.problems += compare_files(
        "model", entry.get("files", {}), file_hashes(model_dir), "the ledger"
    )
    if last is not None and entry.get("weights") != last.get("global_weights"):
        v.problems.append("model: the model entry's weights differ from the last round's")
    try:
        saved = saved_trainable_weights(model_dir)
    except Exception as exc:  # noqa: BLE001 - an unloadable model is a finding
        v.problems.append(f"model: cannot be loaded ({str(exc).splitlines()[0][:80]})")
        return
    if weights_hash(saved) != entry.get("weights"):
        v.problems.append("model: saved trainable weights differ from the ledger")
