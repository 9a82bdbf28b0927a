"""Fixed-point encoding of clipped, weighted updates into Z_{2^64} (or Z_{2^32}).

Each coordinate is clipped to [−R, R] (``privacy.secagg_range``), scaled by the client's
weight w_k = min(n_k, n_cap)/n_cap ∈ (0, 1], and mapped to an integer with ``bits`` bits:
q(v) = round((w_k·v + R) / (2R) · (2^bits − 1)); the weight itself is appended as one more
coordinate, encoded on [0, 1] the same way, so the sum carries Σ w_k. Before it ride
``META`` = 2 coordinates of metadata the server needs only summed, never per client:
w_k·ℓ_k and w_k·[ℓ_k known], with ℓ_k the client's training loss clipped to
[0, ``LOSS_MAX``] and scaled onto [0, R]; the sum gives the w-weighted mean loss. ``bits`` leaves
⌈log2 n⌉ + 1 bits of headroom so the sum of n clients never wraps: the sum of encodings
decodes exactly to Σ_k w_k·v_k and Σ_k w_k (up to the quantisation step 2R/(2^bits − 1)).

The word is 64 bits (``bits`` = min(52, 63 − ⌈log2 n⌉): 52 at 100 clients) or, with
``privacy.secagg_word = 32``, 32 bits (31 − ⌈log2 n⌉: 24 at 100 clients, a step of
2R/2^24): half the bytes up and half the mask expansion, at that coarser step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

WORDS = {64: np.uint64, 32: np.uint32}  # word bits -> the masked vector's dtype


def bits_for(num_clients: int, word: int = 64) -> int:
    """Bits per value so that the sum of ``num_clients`` encodings fits in ``word`` bits."""
    head = math.ceil(math.log2(max(num_clients, 2)))
    return min(52, 63 - head) if word == 64 else word - 1 - head


META = 2  # metadata coordinates: w·loss, w·[loss known]
LOSS_MAX = 64.0  # training losses are clipped to [0, LOSS_MAX] before encoding


def words(numel: int) -> int:
    """Words of one encoding of a ``numel``-value update."""
    return numel + META + 1


def encode(
    delta: torch.Tensor,
    weight: float,
    value_range: float,
    bits: int,
    loss: float | None = None,
    word: int = 64,
) -> np.ndarray:
    """[w·clip(Δ, ±R) ; w·ℓ', w·[ℓ known] ; w] as fixed point in ``word``-bit words (ℓ'
    the loss scaled onto [0, R]; the weight on the range [0, 1])."""
    if word not in WORDS or not 1 <= bits < word:
        raise ValueError(f"secagg: {bits} bits per value do not fit a {word}-bit word")
    scale = (2**bits - 1) / (2 * value_range)
    known = loss is not None and math.isfinite(loss)
    meta = [min(max(loss, 0.0), LOSS_MAX) / LOSS_MAX * value_range if known else 0.0,
            value_range if known else 0.0]  # fmt: skip
    v = np.concatenate([np.clip(delta.double().numpy(), -value_range, value_range), meta])
    q = np.rint((v * weight + value_range) * scale).astype(np.uint64)
    qw = np.uint64(round(weight * (2**bits - 1)))
    return np.concatenate([q, [qw]]).astype(WORDS[word], copy=False)


def decode(total: np.ndarray, count: int, value_range: float, bits: int):
    """(Σ w_k·Δ_k, Σ w_k) from the sum of ``count`` encodings."""
    values, w, _ = decode_all(total, count, value_range, bits)
    return values, w


def decode_all(total: np.ndarray, count: int, value_range: float, bits: int):
    """(Σ w_k·Δ_k, Σ w_k, the w-weighted mean training loss or None)."""
    scale = (2**bits - 1) / (2 * value_range)
    s = total[:-1].astype(np.float64) / scale - count * value_range
    w = float(total[-1]) / (2**bits - 1)
    loss_sum, known = s[-META] / value_range * LOSS_MAX, s[-META + 1] / value_range
    loss = float(loss_sum / known) if known > 1e-9 else None
    return torch.from_numpy(s[:-META].astype(np.float32)), w, loss
