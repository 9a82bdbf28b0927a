"""FedGPT in one call: :func:`federate` runs a federation on your own model and your own
in-memory data, with every component a configuration can name (a registered aggregator,
server optimiser, privacy mechanism, secure sum, task), and writes the same run folder
as ``fedgpt run``::

    summary = federate(model, {"hospital-a": texts_a, "hospital-b": texts_b},
                       rounds=5, aggregator="median", out="runs/mine")

``model`` is a Hugging Face causal LM (with its ``tokenizer``), a local checkpoint
folder, or a plain ``torch.nn.Module`` whose ``forward(input_ids)`` returns logits
(:class:`~fedgpt.models.adapter.LogitsModel`; without a tokenizer, text is read as UTF-8
bytes, vocabulary 256).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedgpt.build import load_run_config, prepare_with
from fedgpt.callbacks import Hooks
from fedgpt.data import ClientText
from fedgpt.data.clients import client_from_lines
from fedgpt.errors import ConfigError
from fedgpt.experiment import run_prepared
from fedgpt.models.build import ModelBundle

# keyword shortcuts for the keys set most often; anything else: section__key=value
SHORT = {
    "rounds": "federation.rounds",
    "aggregator": "federation.aggregator",
    "server_optimizer": "federation.server_optimizer",
    "clients_per_round": "federation.min_clients",
    "local_steps": "client.local_steps",
    "lr": "client.lr",
    "seed": "seed",
    "privacy": "privacy.mode",
    "secure_aggregation": "privacy.secure_aggregation",
}


def federate(
    model: torch.nn.Module | str | Path,
    data: Mapping[str, str | Sequence[str]],
    *,
    tokenizer=None,
    out: str | Path = "runs/federate",
    hooks: Hooks | None = None,
    **settings: Any,
) -> dict:
    """Run a federation of ``data`` (client id → its text, one string or lines; the last
    20 % of each client's lines are its test text) fine-tuning ``model``; returns the
    summary (``summary["federated"]``: test loss, perplexity, accuracy). ``settings``:
    the shortcuts in :data:`SHORT` or any configuration key as ``section__key=value``."""
    cfg = load_run_config(None, [*_overrides(settings), f'out_dir="{Path(out).parent}"'])
    clients = [_client(cid, text, cfg.data.train_fraction) for cid, text in data.items()]
    if not clients:
        raise ConfigError("federate: data holds no client")
    prep = prepare_with(cfg, clients, _bundle(model, tokenizer))
    return run_prepared(cfg, prep, Path(out), hooks=hooks)


def _overrides(settings: dict[str, Any]) -> list[str]:
    import tomli_w

    out = ["baselines.enabled=false"]
    for key, value in settings.items():
        dotted = SHORT.get(key, key.replace("__", "."))
        if "." not in dotted and dotted != "seed":
            raise ConfigError(f"federate: unknown setting {key!r} (use section__key=value)")
        text = tomli_w.dumps({"v": value}).split("=", 1)[1].strip()
        out.append(f"{dotted}={text}")
    return out


def _client(cid: str, text: str | Sequence[str], train_fraction: float) -> ClientText:
    lines = text.splitlines() if isinstance(text, str) else [str(t) for t in text]
    return client_from_lines(str(cid), lines, train_fraction)


def _bundle(model, tokenizer) -> ModelBundle:
    from fedgpt.models.build import load_pretrained
    from fedgpt.models.tokenizer import Codec

    if isinstance(model, str | Path):
        return load_pretrained(str(model))
    if hasattr(model, "config") and hasattr(model, "save_pretrained"):  # Hugging Face
        if tokenizer is None:
            raise ConfigError("federate: a Hugging Face model needs its tokenizer")
        return ModelBundle(model, tokenizer, Codec(tokenizer), type(model).__name__)
    from fedgpt.models.adapter import ByteCodec, LogitsModel

    codec = ByteCodec() if tokenizer is None else Codec(tokenizer)
    return ModelBundle(LogitsModel(model), tokenizer or codec, codec, type(model).__name__)
