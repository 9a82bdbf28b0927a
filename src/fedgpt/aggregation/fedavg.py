"""Weighted averaging of flat client deltas.

FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", Algorithm 1): Δ_t = Σ_k (n_k / n) Δ_k with n = Σ_k n_k over the
clients that reported this round.
"""

from __future__ import annotations

import torch

from fedgpt.errors import FedGPTError


def weighted_average(deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_k (w_k / Σ w) · deltas[k] for ``deltas`` of shape (K, P) and ``weights`` of shape (K,).

    One matrix-vector product; float64 accumulation of the normalised weights.
    """
    if deltas.ndim != 2 or weights.shape != (deltas.shape[0],):
        raise FedGPTError(
            f"weighted_average: expected deltas (K, P) and weights (K,), got "
            f"{tuple(deltas.shape)} and {tuple(weights.shape)}"
        )
    w = weights.to(torch.float64)
    total = w.sum()
    if not total > 0:
        raise FedGPTError("weighted_average: the weights must sum to a positive number")
    return (w / total).to(deltas.dtype) @ deltas


def coverage_average(
    deltas: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per parameter, the n_k-weighted mean over the clients that trained it:
    Δ_j = Σ_k n_k m_kj Δ_kj / Σ_k n_k m_kj, and 0 where nobody did (as in HeteroFL, Diao et
    al. 2021, and FjORD, Horváth et al. 2021). ``deltas`` (K, P) hold zeros outside each
    client's slice; ``masks`` (K, P) are the slices. Two matrix-vector products."""
    w = weights.to(deltas.dtype)
    num = w @ deltas
    den = w @ masks.to(deltas.dtype)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))


def dissimilarity(
    deltas: torch.Tensor, aggregate: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per client: ‖Δ_k − Δ‖ / ‖Δ‖ and cos(Δ_k, Δ) — how far each site pulls from the
    aggregate (an empirical counterpart of the per-client heterogeneity ε_k in FedAvg/FedProx
    convergence bounds, e.g. Li et al. 2020, Definition 3)."""
    agg_norm = aggregate.norm().clamp_min(1e-12)
    rel = (deltas - aggregate).norm(dim=1) / agg_norm
    cos = (deltas @ aggregate) / (deltas.norm(dim=1).clamp_min(1e-12) * agg_norm)
    return rel, cos
