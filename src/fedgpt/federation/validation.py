"""Checks every reply passes before it may touch the aggregate: type, round, nonce (no
replays), shape, dtype, length, finiteness, norm bound, size on the wire, decodability.
Each check returns the reason a reply is refused, or ``None``."""

from __future__ import annotations

import torch

from fedgpt.messages import Message, Reply
from fedgpt.schemas import Expect, check_config, check_payload, envelope


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
    or its device tier's), finite, with L2 norm at most ``max_norm`` (0 = unbounded).
    The envelope, config and payload checks are the schema's (fedgpt.schemas)."""
    if (why := envelope(reply)) is not None:
        return why
    expect = Expect(
        "train/result", rnd, numel, nonce=nonce, tier_sizes=tier_sizes, ckks_chunks=ckks_chunks
    )
    model, why = check_config(reply, expect)  # type, round, nonce, num_examples, metrics...
    if why is not None:
        return why
    if max_bytes:
        size = reply.nbytes
        if size > max_bytes:
            return f"oversized payload: {size} bytes, at most {max_bytes} expected"
    if ckks_chunks:
        chunks = reply.blobs.get("delta_ckks")
        if not isinstance(chunks, list) or len(chunks) != ckks_chunks:
            return f"expected {ckks_chunks} CKKS ciphertexts"
        if not all(isinstance(c, bytes) and c for c in chunks):
            return "a CKKS ciphertext is empty or not bytes"
        return None
    if (why := check_payload(reply, model, expect)) is not None:  # float32, shape, finite
        return why
    delta = reply.tensors["delta"]
    if max_norm > 0:
        norm = float(torch.linalg.vector_norm(delta))
        if norm > max_norm:
            return f"update norm {norm:.4g} above federation.max_update_norm = {max_norm:g}"
    return None


def undecodable(reply: Reply) -> str | None:
    """Why a reply's payloads are not named tensors and lists of byte strings (what a
    wire decoder would refuse), or its type or config malformed, or ``None``."""
    return envelope(reply) if isinstance(reply, Message) else None


def max_update_bytes(numel: int, ckks_chunks: int = 0) -> int:
    """The most bytes a valid update may carry: its float32 values, or for CKKS that many
    ciphertexts of at most 2 polynomials x N coefficients x moduli x 8 bytes (+ header)."""
    if not ckks_chunks:
        return 4 * numel
    from fedgpt.privacy.ckks import CkksParams

    p = CkksParams()
    return ckks_chunks * (2 * p.poly_modulus_degree * len(p.coeff_mod_bit_sizes) * 8 + 4096)
