"""Streaming aggregation: each update is folded into a running sum as it arrives, in
place and in float32, so the server holds O(model) whatever the number of clients.

FedAvg (McMahan et al. 2017, Alg. 1) is linear, Δ = Σ_k n_k Δ_k / Σ_k n_k, and so is its
per-coordinate coverage average under device tiers (Diao et al. 2021, HeteroFL, eq. 4:
Δ_j = Σ_k n_k m_kj Δ_kj / Σ_k n_k m_kj): both are a running numerator plus, per tier, a
running weight, divided once at the end. A tier's slice is folded through the indices it
covers (``index_add_``), never expanded to the full length.
"""

from __future__ import annotations

import torch


class RunningSum:
    """Σ_k w_k Δ_k over ``numel`` parameters, with the weights Σ_k w_k per tier."""

    def __init__(self, numel: int):
        self.num = torch.zeros(numel, dtype=torch.float32)
        self.weight: dict[str | None, float] = {}  # tier (None: the whole model) -> Σ w_k
        self.count = 0

    def fold(self, delta: torch.Tensor, weight: float, index: torch.Tensor | None = None,
             tier: str | None = None) -> None:  # fmt: skip
        """Add ``weight`` · ``delta``; ``index`` (long) the coordinates a slice covers."""
        if index is None:
            self.num.add_(delta, alpha=weight)
        else:
            self.num.index_add_(0, index, delta, alpha=weight)
        self.weight[tier] = self.weight.get(tier, 0.0) + weight
        self.count += 1

    def unfold(self, delta: torch.Tensor, weight: float, index: torch.Tensor | None = None,
               tier: str | None = None) -> None:  # fmt: skip
        """Take back a folded update (an identical second copy of it arrived)."""
        self.fold(delta, -weight, index, tier)
        self.count -= 2

    @property
    def total(self) -> float:
        return sum(self.weight.values())

    def mean(self, masks: dict[str | None, torch.Tensor] | None = None) -> torch.Tensor:
        """The weighted mean; with tiers (``masks``: tier -> bool mask) per coordinate over
        the clients that trained it, 0 where nobody did. Computed in place: the sum is
        spent (no second model-sized buffer)."""
        if set(self.weight) <= {None}:
            return self.num.div_(self.total)
        den = torch.zeros_like(self.num)
        for tier, w in self.weight.items():
            den.add_(masks[tier].to(den.dtype), alpha=w) if tier is not None else den.add_(w)
        return torch.where(den > 0, self.num / den.clamp_min(1e-30), torch.zeros_like(den))


class Sketch:
    """Each client's squared norm and a systematic sample of its update (every
    ``stride``-th coordinate from a seeded offset; the whole update when it has at most
    ``size`` coordinates), so the per-client dissimilarity ‖Δ_k − Δ‖ / ‖Δ‖ and
    cos(Δ_k, Δ) can be reported after the aggregate Δ is known without keeping the
    updates: ⟨Δ_k, Δ⟩ ≈ (P / m) Σ_{j ∈ sample} Δ_kj Δ_j (exact when the sample is all)."""

    def __init__(self, numel: int, size: int, gen: torch.Generator):
        self.numel = numel
        self.stride = max(1, -(-numel // size))
        offset = int(torch.randint(self.stride, (1,), generator=gen)) if self.stride > 1 else 0
        self.offset = offset
        self.rows: dict[str, tuple[float, torch.Tensor]] = {}

    @property
    def exact(self) -> bool:
        return self.stride == 1

    def add(self, cid: str, full: torch.Tensor, norm: float) -> None:
        """``full``: the update at full length (zeros outside a tier's slice)."""
        self.rows[cid] = (norm * norm, full[self.offset :: self.stride].clone())

    def drop(self, cid: str) -> None:
        self.rows.pop(cid, None)

    def dissimilarity(self, agg: torch.Tensor) -> dict[str, tuple[float, float]]:
        """cid -> (‖Δ_k − Δ‖ / ‖Δ‖, cos(Δ_k, Δ))."""
        if not self.rows:
            return {}
        ids = list(self.rows)
        sample = agg[self.offset :: self.stride]
        agg_norm = float(agg.norm().clamp_min(1e-12))
        rows = torch.stack([self.rows[c][1] for c in ids])
        sq = torch.tensor([self.rows[c][0] for c in ids], dtype=torch.float64)
        if self.exact:  # the direct formula, as for stacked updates
            rel = ((rows - agg).norm(dim=1) / agg_norm).double()
            dot = (rows @ agg).double()
        else:
            dot = (rows @ sample).double() * (self.numel / sample.numel())
            rel = (sq - 2 * dot + agg_norm**2).clamp_min(0).sqrt() / agg_norm
        cos = dot / (sq.sqrt().clamp_min(1e-12) * agg_norm)
        return {c: (float(r), float(k)) for c, r, k in zip(ids, rel, cos, strict=True)}
