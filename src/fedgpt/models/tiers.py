"""Capability tiers: which slice of the model a device trains (and sends).

A tier is data, not a code path: ``full`` (every trainable parameter), ``top_blocks:k``
(the last k transformer blocks, the final norm and the output head), ``embeddings``
(token and position embeddings), ``lora:r`` (the first r rank components of every LoRA
adapter of a rank-r_max model). A tier becomes a boolean mask over the flat trainable
vector (``ParamSpec`` order), built per parameter and expanded with one
``repeat_interleave`` — no per-element loops.

``lora:r`` is HetLoRA's zero-padding (Cho et al., "Heterogeneous LoRA for Federated
Fine-tuning of On-Device Foundation Models", EMNLP 2024, §3.1): a rank-r client takes rows
[0, r) of every A (r_max × in) and columns [0, r) of every B (out × r_max), i.e. the other
components are zero on the client. Then the gradients of the zeroed components are exactly
zero (∂L/∂B_{:,j} ∝ (A x)_j = 0 and ∂L/∂A_{j,:} ∝ B_{:,j} = 0), so the client trains and
sends only its slice; the server coverage-averages each rank component over the clients
that hold it (HetLoRA's zero-padded average, normalised per component, eq. 4 without
the sparsity weighting).

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


def _sized(tier: str, kind: str, hi: int) -> int | None:
    """k of ``"kind:k"`` when 1 <= k <= hi, else None."""
    head, _, k = tier.partition(":")
    return int(k) if head == kind and k.isdigit() and 1 <= int(k) <= hi else None


def parse_tier(tier: str, n_layer: int, lora_r: int = 0) -> tuple[str, int]:
    """("full"|"top_blocks"|"embeddings"|"lora", k), or a ConfigError naming the tier.

    ``lora_r`` is the model's adapter rank (0 for a model without LoRA): a LoRA model has
    the tiers ``full`` and ``lora:r`` (1 ≤ r ≤ lora_r), a plain model the others."""
    if tier == "full":
        return "full", 0
    if lora_r:
        if (r := _sized(tier, "lora", lora_r)) is not None:
            return "lora", r
        raise ConfigError(
            f"device tier {tier!r}: a LoRA model of rank {lora_r} takes 'full' or 'lora:r' "
            f"with 1 <= r <= {lora_r}"
        )
    if tier == "embeddings":
        return tier, 0
    if (k := _sized(tier, "top_blocks", n_layer)) is not None:
        return "top_blocks", k
    raise ConfigError(
        f"devices.tier(s): device tier {tier!r}: expected 'full', 'embeddings' or "
        f"'top_blocks:k' with 1 <= k <= {n_layer}"
    )


def param_in_tier(name: str, kind: str, k: int, n_layer: int) -> bool:
    if kind in ("full", "lora"):
        return True
    if kind == "embeddings":
        return any(e in name for e in _EMBED)
    m = _BLOCK.search(name)
    if m:
        return int(m.group(1)) >= n_layer - k
    return any(h in name for h in _HEAD)


def tier_params(spec: ParamSpec, tier: str, n_layer: int, lora_r: int = 0) -> torch.Tensor:
    """One bool per parameter of ``spec``: trained in this tier?"""
    kind, k = parse_tier(tier, n_layer, lora_r)
    return torch.tensor([param_in_tier(n, kind, k, n_layer) for n in spec.names])


def tier_mask(spec: ParamSpec, tier: str, n_layer: int, lora_r: int = 0) -> torch.Tensor:
    """Boolean mask over the flat trainable vector."""
    kind, r = parse_tier(tier, n_layer, lora_r)
    if kind == "lora":  # rank components [0, r): rows of A, columns of B
        parts = []
        for name, shape in zip(spec.names, spec.shapes, strict=True):
            m = torch.ones(shape, dtype=torch.bool)
            if "lora_A" in name:
                m[r:, :] = False
            elif "lora_B" in name:
                m[:, r:] = False
            parts.append(m.reshape(-1))
        return torch.cat(parts)
    sizes = torch.tensor([int(torch.tensor(s).prod()) if s else 1 for s in spec.shapes])
    return tier_params(spec, tier, n_layer).repeat_interleave(sizes)


def estimate_mb(
    spec: ParamSpec,
    tier: str,
    n_layer: int,
    n_embd: int,
    vocab: int,
    batch: int,
    seq: int,
    lora_r: int = 0,
    frozen: int = 0,
) -> float:
    """Estimated training memory of ``tier`` in MiB (see the module docstring);
    ``frozen`` counts the weights outside ``spec`` (a LoRA model's base)."""
    kind, k = parse_tier(tier, n_layer, lora_r)
    trained = int(tier_mask(spec, tier, n_layer, lora_r).sum())
    blocks = n_layer if kind in ("full", "lora") else (k if kind == "top_blocks" else 0)
    tokens = batch * seq
    activations = tokens * (16 * n_embd * blocks + 2 * vocab)
    floats = frozen + spec.numel + 3 * trained + activations
    return floats * 4 / 2**20


def choose_tier(
    spec: ParamSpec,
    budget_mb: float,
    n_layer: int,
    n_embd: int,
    vocab: int,
    batch: int,
    seq: int,
    lora_r: int = 0,
    frozen: int = 0,
) -> str:
    """The largest tier that fits ``budget_mb``: full, top_blocks:n−1 … 1, embeddings; for
    a LoRA model of rank r_max: full (= lora:r_max), lora:r_max/2, lora:r_max/4 … lora:1."""
    if lora_r:
        ranks, r = [], lora_r // 2
        while r >= 1:
            ranks.append(r)
            r //= 2
        order = ["full", *[f"lora:{r}" for r in ranks]]
    else:
        order = ["full", *[f"top_blocks:{k}" for k in range(n_layer - 1, 0, -1)], "embeddings"]
    est = [estimate_mb(spec, t, n_layer, n_embd, vocab, batch, seq, lora_r, frozen) for t in order]
    for tier, mb in zip(order, est, strict=True):
        if mb <= budget_mb:
            return tier
    raise ConfigError(
        f"device memory budget {budget_mb} MB is below the smallest tier ({order[-1]}, "
        f"{est[-1]:.1f} MB estimated)"
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
