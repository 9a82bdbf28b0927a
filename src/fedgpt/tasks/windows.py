"""Token batches for local training and evaluation (vectorised, seeded)."""

from __future__ import annotations

import torch


def sample_windows(
    tokens: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator
) -> torch.Tensor:
    """``batch_size`` random windows of ``seq_len + 1`` tokens (inputs + next-token targets).

    Start offsets are drawn uniformly from ``gen``; a text shorter than the window gives
    windows of its whole length.
    """
    span = min(seq_len + 1, tokens.numel())
    starts = torch.randint(0, tokens.numel() - span + 1, (batch_size,), generator=gen)
    return tokens[starts[:, None] + torch.arange(span)[None, :]]


def eval_windows(tokens: torch.Tensor, seq_len: int) -> list[torch.Tensor]:
    """Non-overlapping windows (stride ``seq_len``) covering every next-token target once.

    Returns one ``(n, seq_len + 1)`` tensor of full windows and, if tokens remain, one
    ``(1, r + 1)`` tail window, so every token after the first is predicted exactly once.
    """
    n_targets = tokens.numel() - 1
    if n_targets <= 0:
        return []
    full = n_targets // seq_len
    out = []
    if full:
        idx = torch.arange(full)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
        out.append(tokens[idx])
    rest = n_targets - full * seq_len
    if rest:
        out.append(tokens[full * seq_len :].unsqueeze(0))
    return out


def record_windows(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The client's records: non-overlapping windows of ``seq_len + 1`` tokens, (n, L+1)."""
    n = (tokens.numel() - 1) // seq_len
    idx = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
    return tokens[idx]
