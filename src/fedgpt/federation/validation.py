"""Checks every reply passes before it may touch the aggregate: type, round, nonce (no
replays), shape, dtype, length, finiteness, norm bound, size on the wire, decodability.
Each check returns the reason a reply is refused, or ``None``."""

from __future__ import annotations

import math

from fedgpt.messages import Message, Reply
from fedgpt.schemas import Expect, check_config, check_payload, envelope, l2_norm, not_finite


def validate_reply(*args, **kwargs) -> str | None:
    """Why a training reply cannot be used, or ``None`` if it is a valid update: the
    reason of :func:`check_update` (same arguments), without the norm."""
    return check_update(*args, **kwargs)[0]


def check_update(
    reply: Reply,
    rnd: int,
    numel: int,
    ckks_chunks: int = 0,
    tier_sizes: dict | None = None,
    *,
    nonce: str | None = None,
    max_norm: float = 0.0,
    max_bytes: int = 0,
) -> tuple[str | None, float]:
    """(why a training reply cannot be used or ``None``, the update's L2 norm).

    Checked before anything touches the aggregate; the first failed check is the reason
    (docs/ledger.md, "Validation"): a failure or wrong reply type; the round number; the
    nonce of the message (``nonce``: the reply must echo it, so a reply replayed from an
    earlier message is refused); ``num_examples``; the payload size (``max_bytes`` > 0:
    more bytes than the expected update is oversized); with ``ckks_chunks`` > 0 that many
    non-empty ciphertexts; otherwise a float32 update of the expected length (``numel``,
    or its device tier's), finite, with L2 norm at most ``max_norm`` (0 = unbounded).
    The envelope, config and payload checks are the schema's (fedgpt.schemas); finiteness
    and the norm bound share one pass over the update (its norm, returned for the
    aggregate: clipping, outliers)."""
    if (why := envelope(reply)) is not None:
        return why, math.nan
    expect = Expect(
        "train/result", rnd, numel, nonce=nonce, tier_sizes=tier_sizes,
        ckks_chunks=ckks_chunks, finite=False,
    )  # fmt: skip
    model, why = check_config(reply, expect)  # type, round, nonce, num_examples, metrics...
    if why is not None:
        return why, math.nan
    if max_bytes:
        size = reply.nbytes
        if size > max_bytes:
            return f"oversized payload: {size} bytes, at most {max_bytes} expected", math.nan
    if ckks_chunks:
        chunks = reply.blobs.get("delta_ckks")
        if not isinstance(chunks, list) or len(chunks) != ckks_chunks:
            return f"expected {ckks_chunks} CKKS ciphertexts", math.nan
        if not all(isinstance(c, bytes) and c for c in chunks):
            return "a CKKS ciphertext is empty or not bytes", math.nan
        return None, math.nan
    if (why := check_payload(reply, model, expect)) is not None:  # float32, shape
        return why, math.nan
    delta = reply.tensors["delta"]
    norm = l2_norm(delta)
    if not_finite(delta, norm):
        return "update contains NaN or inf", norm
    if max_norm > 0 and norm > max_norm:
        return f"update norm {norm:.4g} above federation.max_update_norm = {max_norm:g}", norm
    return None, norm


def decompressed(reply: Reply, kind: str, sizes: set[int], bucket: int) -> tuple[Reply, str | None]:
    """A training reply with its compressed update (``client.compression``) decoded to a
    float32 ``delta``, or the reason it does not decode (:mod:`fedgpt.client.compress`)."""
    if kind == "none" or not isinstance(reply, Message) or reply.type != "train/result":
        return reply, None
    from fedgpt.client.compress import decode

    delta, why = decode(kind, reply.tensors, sizes, bucket=bucket)
    if why is not None:
        return reply, why
    return Message(reply.type, reply.config, {"delta": delta}, reply.blobs), None


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
