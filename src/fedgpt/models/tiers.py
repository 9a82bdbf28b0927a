"""Capability tiers: which slice of the model a device trains (and sends).

A tier is data, not a code path: ``full`` (every trainable parameter), ``top_blocks:k``
(the last k transformer blocks, the final norm and the output head), ``embeddings``
(token and position embeddings). A tier becomes a boolean mask over the flat trainable
vector (``ParamSpec`` order), built per parameter and expanded with one
``repeat_interleave`` — no per-element loops.

With a memory budget, ``choose_tier`` picks the largest tier whose estimated training
memory fits: all weights (fp32) + gradients and AdamW state (2 moments) of the trained
slice + activations kept for backprop through the trained blocks
(≈ 16 floats per token per width per block, plus the logits), for the configured batch.
"""

from __future__ import annotations

import re

import torch

from fedgpt.errors import ConfigError
from fedgpt.models.params import ParamSpec

_BLOCK = re.compile(r"\.(?:h|layers)\.(\d+)\.")
_EMBED = ("wte", "wpe", "embed_tokens", "embed_positions")
_HEAD = ("lm_head", "ln_f", "model.norm", "final_layer_norm")


def parse_tier(tier: str, n_layer: int) -> tuple[str, int]:
    """("full"|"top_blocks"|"embeddings", k), or a ConfigError naming the tier."""
    if tier in ("full", "embeddings"):
        return tier, 0
    if tier.startswith("top_blocks:"):
        try:
            k = int(tier.split(":", 1)[1])
        except ValueError:
            k = -1
        if 1 <= k <= n_layer:
            return "top_blocks", k
    raise ConfigError(
        f"device tier {tier!r}: expected 'full', 'embeddings' or 'top_blocks:k' with "
        f"1 <= k <= {n_layer}"
    )


def param_in_tier(name: str, kind: str, k: int, n_layer: int) -> bool:
    if kind == "full":
        return True
    if kind == "embeddings":
        return any(e in name for e in _EMBED)
    m = _BLOCK.search(name)
    if m:
        return int(m.group(1)) >= n_layer - k
    return any(h in name for h in _HEAD)


def tier_params(spec: ParamSpec, tier: str, n_layer: int) -> torch.Tensor:
    """One bool per parameter of ``spec``: trained in this tier?"""
    kind, k = parse_tier(tier, n_layer)
    return torch.tensor([param_in_tier(n, kind, k, n_layer) for n in spec.names])


def tier_mask(spec: ParamSpec, tier: str, n_layer: int) -> torch.Tensor:
    """Boolean mask over the flat trainable vector."""
    sizes = torch.tensor([int(torch.tensor(s).prod()) if s else 1 for s in spec.shapes])
    return tier_params(spec, tier, n_layer).repeat_interleave(sizes)


def estimate_mb(
    spec: ParamSpec, tier: str, n_layer: int, n_embd: int, vocab: int, batch: int, seq: int
) -> float:
    """Estimated training memory of ``tier`` in MiB (see the module docstring)."""
    kind, k = parse_tier(tier, n_layer)
    trained = int(tier_mask(spec, tier, n_layer).sum())
    blocks = n_layer if kind == "full" else (k if kind == "top_blocks" else 0)
    tokens = batch * seq
    activations = tokens * (16 * n_embd * blocks + 2 * vocab)
    floats = spec.numel + 3 * trained + activations
    return floats * 4 / 2**20


def choose_tier(
    spec: ParamSpec, budget_mb: float, n_layer: int, n_embd: int, vocab: int, batch: int, seq: int
) -> str:
    """The largest tier (full, top_blocks:n−1 … 1, embeddings) that fits ``budget_mb``."""
    order = ["full", *[f"top_blocks:{k}" for k in range(n_layer - 1, 0, -1)], "embeddings"]
    for tier in order:
        if estimate_mb(spec, tier, n_layer, n_embd, vocab, batch, seq) <= budget_mb:
            return tier
    need = estimate_mb(spec, "embeddings", n_layer, n_embd, vocab, batch, seq)
    raise ConfigError(
        f"device memory budget {budget_mb} MB is below the smallest tier (embeddings, "
        f"{need:.1f} MB estimated)"
    )


def assign_tiers(devices, client_ids, seed: int, choose) -> dict[str, str]:
    """Each client's tier: explicit ``tiers`` > ``memory_mb`` budget (``choose(mb)``) >
    seeded ``mix`` shares > the default ``tier``."""
    import numpy as np

    unknown = sorted((set(devices.tiers) | set(devices.memory_mb)) - set(client_ids))
    if unknown:
        raise ConfigError(f"devices: unknown client id(s) {unknown[:3]}")
    out = dict.fromkeys(client_ids, devices.tier)
    if devices.mix:
        names = list(devices.mix)
        p = np.array([devices.mix[n] for n in names], dtype=float)
        if (p < 0).any() or p.sum() <= 0:
            raise ConfigError("devices.mix: expected non-negative shares with a positive sum")
        rng = np.random.default_rng([seed, 0x7135])
        draws = rng.choice(len(names), size=len(client_ids), p=p / p.sum())
        out = {c: names[i] for c, i in zip(client_ids, draws, strict=True)}
    for cid, mb in devices.memory_mb.items():
        out[cid] = choose(mb)
    out.update(devices.tiers)
    return out
