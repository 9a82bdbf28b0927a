"""Fixed-point encoding of clipped, weighted updates into Z_{2^64}.

Each coordinate is clipped to [−R, R] (``privacy.secagg_range``), scaled by the client's
weight w_k = min(n_k, n_cap)/n_cap ∈ (0, 1], and mapped to an integer with ``bits`` bits:
q(v) = round((w_k·v + R) / (2R) · (2^bits − 1)); the weight itself is appended as one more
coordinate, encoded on [0, 1] the same way, so the sum carries Σ w_k. ``bits`` leaves
⌈log2 n⌉ + 1 bits of headroom so the sum of n clients never wraps: the sum of encodings
decodes exactly to Σ_k w_k·v_k and Σ_k w_k (up to the quantisation step 2R/(2^bits − 1)).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def bits_for(num_clients: int) -> int:
    """Bits per value so that the sum of ``num_clients`` encodings fits in 64 bits."""
    return min(52, 63 - math.ceil(math.log2(max(num_clients, 2))))


def encode(delta: torch.Tensor, weight: float, value_range: float, bits: int) -> np.ndarray:
    """[w·clip(Δ, ±R) ; w] as uint64 fixed point (the weight on the range [0, 1])."""
    scale = (2**bits - 1) / (2 * value_range)
    v = np.clip(delta.double().numpy(), -value_range, value_range) * weight
    q = np.rint((v + value_range) * scale).astype(np.uint64)
    qw = np.uint64(round(weight * (2**bits - 1)))
    return np.concatenate([q, [qw]])


def decode(total: np.ndarray, count: int, value_range: float, bits: int):
    """(Σ w_k·Δ_k, Σ w_k) from the sum of ``count`` encodings."""
    scale = (2**bits - 1) / (2 * value_range)
    s = total[:-1].astype(np.float64) / scale - count * value_range
    w = float(total[-1]) / (2**bits - 1)
    return torch.from_numpy(s.astype(np.float32)), w
