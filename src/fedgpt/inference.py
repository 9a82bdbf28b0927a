"""Using a finished run's model: evaluation on new text and text generation."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fedgpt.client.trainer import evaluate_tokens
from fedgpt.errors import DataError, RunError
from fedgpt.models.build import ModelBundle, load_pretrained
from fedgpt.models.generate import sample


def load_run_model(run_dir: str | Path) -> ModelBundle:
    model_dir = Path(run_dir) / "model"
    if not Path(run_dir).is_dir():
        raise RunError(f"run folder '{run_dir}' does not exist")
    if not (model_dir / "config.json").is_file():
        raise RunError(f"run folder '{run_dir}' has no saved model (expected {model_dir})")
    return load_pretrained(model_dir)


def _run_seq_len(run_dir: Path) -> int:
    from fedgpt.config import load_config

    cfg_path = run_dir / "config.toml"
    return load_config(cfg_path).client.seq_len if cfg_path.is_file() else 64


def evaluate_run(run_dir: str | Path, data: str | Path, seq_len: int | None = None) -> dict:
    """Token-weighted loss, perplexity and next-token accuracy of the run's model on a
    client directory (every client's test split) or a plain text file."""
    from fedgpt.data import load_client_dir, load_text_file

    run_dir, data = Path(run_dir), Path(data)
    bundle = load_run_model(run_dir)
    if seq_len is not None and seq_len < 1:
        raise DataError(f"--seq-len must be >= 1, got {seq_len}")
    seq = seq_len or _run_seq_len(run_dir)
    mc = getattr(bundle.model, "config", None)
    context = getattr(mc, "n_positions", None) or getattr(mc, "max_position_embeddings", None)
    if context and seq >= context:
        raise DataError(f"--seq-len {seq} must be below the model's context of {context}")
    if data.is_dir():
        clients = load_client_dir(data)
    elif data.is_file():
        clients = [load_text_file(data)]
    else:
        raise DataError(f"--data '{data}' does not exist")
    loss_sum = correct = count = unknown = 0
    for c in clients:
        unknown += bundle.codec.unknown(c.test)
        ids = torch.from_numpy(bundle.codec.encode(c.test))
        s, k, n = evaluate_tokens(bundle.model, ids, seq)
        loss_sum, correct, count = loss_sum + s, correct + k, count + n
    if count == 0:
        raise DataError(f"--data '{data}': no text to evaluate")
    loss = loss_sum / count
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "accuracy": correct / count,
        "tokens": count,
        "clients": len(clients),
        "unknown_characters": unknown,  # not in the model's vocabulary: read as <unk>
    }


@torch.no_grad()
def generate_text(
    run_dir: str | Path,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    seed: int = 0,
    warn=None,
) -> str:
    """The prompt continued by ``max_new_tokens`` sampled tokens (greedy if temperature 0).

    A sliding window keeps the input within the sequence length the model was trained on
    (``client.seq_len`` of the run), since positions beyond it were never trained.
    """
    bundle = load_run_model(run_dir)
    if (unknown := bundle.codec.unknown(prompt)) and warn is not None:
        warn(f"warning: {unknown} character(s) of the prompt are not in the model's vocabulary")
    if not bundle.codec.encode(prompt).tolist():
        raise DataError("--prompt: expected non-empty text")
    context = min(bundle.max_length, _run_seq_len(Path(run_dir)))
    return sample(bundle, prompt, max_new_tokens, temperature, seed, context)
