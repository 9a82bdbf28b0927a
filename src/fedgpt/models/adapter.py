"""A plain ``torch.nn.Module`` as a FedGPT model: any module whose ``forward(input_ids)``
returns logits (B, T, V), nanoGPT style, fine-tuned exactly like a Hugging Face causal
LM. The adapter gives it the calling convention FedGPT's tasks use
(``model(input_ids=..., position_ids=...).logits``) and saves it as safetensors.

A byte-level codec (:class:`ByteCodec`, vocabulary 256: the UTF-8 bytes) pairs with such
a model when there is no tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


class LogitsModel(torch.nn.Module):
    """Wraps ``module`` (``forward(input_ids) -> logits``); ``context``: the longest
    sequence it accepts."""

    def __init__(self, module: torch.nn.Module, context: int = 1024):
        super().__init__()
        self.module = module
        self.config = SimpleNamespace(n_positions=context, model_type="plain")

    def forward(self, input_ids: torch.Tensor, position_ids=None, **_) -> SimpleNamespace:
        return SimpleNamespace(logits=self.module(input_ids))

    def save_pretrained(self, out: str | Path, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        Path(out).mkdir(parents=True, exist_ok=True)
        # parameters are views of FedGPT's flat buffer: save copies of their own
        state = {k: v.detach().clone().contiguous() for k, v in self.module.state_dict().items()}
        order = json.dumps(list(state))  # the training order of the flat vector
        save_file(state, str(Path(out) / "model.safetensors"), metadata={"order": order})


class ByteCodec:
    """Text ↔ UTF-8 byte ids (vocabulary 256), vectorised."""

    vocab_size = 256
    is_char = False

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save_pretrained(self, out: str | Path) -> None:
        (Path(out) / "tokenizer.txt").write_text("utf-8 bytes (vocabulary 256)\n")


def load_plain_weights(model_dir: str | Path) -> torch.Tensor:
    """The weights a :class:`LogitsModel` saved, flattened in training order."""
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as f:
        order = json.loads(f.metadata()["order"])
        return torch.cat([f.get_tensor(k).reshape(-1).float() for k in order])
