"""Checks every reply passes before it may touch the aggregate: type, round, nonce (no
replays), shape, dtype, length, finiteness, norm bound, size on the wire, decodability.
Each check returns the reason a reply is refused, or ``None``."""

from __future__ import annotations

import torch

from fedgpt.messages import Failure, Message, Reply


def validate_reply(
    reply: Reply,
    rnd: int,
    numel: int,
    ckks_chunks: int = 0,
    tier_sizes: dict | None = None,
    *,
    nonce: str | None = None,
    max_norm: float = 0.0,
    max_bytes: int = 0,
) -> str | None:
    """Why a training reply cannot be used, or ``None`` if it is a valid update.

    Checked before anything touches the aggregate; the first failed check is the reason
    (docs/ledger.md, "Validation"): a failure or wrong reply type; the round number; the
    nonce of the message (``nonce``: the reply must echo it, so a reply replayed from an
    earlier message is refused); ``num_examples``; the payload size (``max_bytes`` > 0:
    more bytes than the expected update is oversized); with ``ckks_chunks`` > 0 that many
    non-empty ciphertexts; otherwise a float32 update of the expected length (``numel``,
    or its device tier's), finite, with L2 norm at most ``max_norm`` (0 = unbounded)."""
    if isinstance(reply, Failure):
        return reply.reason
    if not isinstance(reply, Message):
        return f"not a message ({type(reply).__name__})"
    if reply.type == "train/failure":
        return str(reply.config.get("reason", "client reported a failure"))
    if reply.type != "train/result":
        return f"unexpected reply type {reply.type!r}"
    if reply.config.get("round") != rnd:
        return f"update for round {reply.config.get('round')!r}, expected {rnd}"
    if nonce is not None and reply.config.get("nonce") != nonce:
        return "reply does not echo the nonce of this round's message (replayed or stale)"
    n = reply.config.get("num_examples")
    if not isinstance(n, int) or n <= 0:
        return f"num_examples must be a positive integer, got {n!r}"
    if max_bytes:
        try:
            size = reply.nbytes
        except (AttributeError, TypeError):
            return "payload does not decode (not tensors and bytes)"
        if size > max_bytes:
            return f"oversized payload: {size} bytes, at most {max_bytes} expected"
    if ckks_chunks:
        chunks = reply.blobs.get("delta_ckks")
        if not isinstance(chunks, list) or len(chunks) != ckks_chunks:
            return f"expected {ckks_chunks} CKKS ciphertexts"
        if not all(isinstance(c, bytes) and c for c in chunks):
            return "a CKKS ciphertext is empty or not bytes"
        return None
    delta = reply.tensors.get("delta")
    if not isinstance(delta, torch.Tensor) or delta.dtype != torch.float32:
        return "update is not a float32 tensor"
    tier = reply.config.get("tier")
    if tier is not None:
        if not tier_sizes or tier not in tier_sizes:
            return f"unknown device tier {tier!r}"
        numel = tier_sizes[tier]
    if delta.shape != (numel,):
        return f"update has shape {tuple(delta.shape)}, expected ({numel},)"
    if not bool(torch.isfinite(delta).all()):
        return "update contains NaN or inf"
    if max_norm > 0:
        norm = float(torch.linalg.vector_norm(delta))
        if norm > max_norm:
            return f"update norm {norm:.4g} above federation.max_update_norm = {max_norm:g}"
    return None


def undecodable(reply: Reply) -> str | None:
    """Why a reply's payloads are not named tensors and lists of byte strings (what a
    wire decoder would refuse), or ``None``."""
    if not isinstance(reply, Message):
        return None
    for name, t in reply.tensors.items():
        if not isinstance(t, torch.Tensor):
            return f"payload does not decode: {name!r} is not a tensor"
    for name, chunks in reply.blobs.items():
        if not isinstance(chunks, list) or not all(isinstance(c, bytes) for c in chunks):
            return f"payload does not decode: {name!r} is not a list of byte strings"
    return None


def max_update_bytes(numel: int, ckks_chunks: int = 0) -> int:
    """The most bytes a valid update may carry: its float32 values, or for CKKS that many
    ciphertexts of at most 2 polynomials x N coefficients x moduli x 8 bytes (+ header)."""
    if not ckks_chunks:
        return 4 * numel
    from fedgpt.privacy.ckks import CkksParams

    p = CkksParams()
    return ckks_chunks * (2 * p.poly_modulus_degree * len(p.coeff_mod_bit_sizes) * 8 + 4096)
