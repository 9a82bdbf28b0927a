"""Homomorphic aggregation with CKKS (TenSEAL).

CKKS (Cheon, Kim, Kim & Song 2017, "Homomorphic Encryption for Arithmetic of Approximate
Numbers") encrypts vectors of reals; ciphertexts can be added and multiplied by plaintext
scalars without the secret key. The flat update is packed into full ciphertexts of N/2
slots each (the last one zero-padded). The server holds only a *public* context (no secret
key) and adds them; each client encrypts its update already multiplied by its weight n_k,
so the sum is Enc(Σ_k n_k·Δ_k) with additions only (no ciphertext-plaintext product, no
rescaling, no level consumed), and the server divides by n = Σ n_k after a key-holding
client decrypts the sum. CKKS is a ring-LWE (lattice) scheme, believed to resist quantum attacks.

Default parameters: N = 8192, coefficient moduli [60, 40, 40, 60] bits (200 bits in
all), scale 2⁴⁰ — within the 218-bit bound for 128-bit classical security at N = 8192
of the Homomorphic Encryption Standard (Albrecht et al. 2018, Table 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedgpt.errors import FedGPTError


def _ts():
    try:
        import tenseal
    except ImportError:  # pragma: no cover
        raise FedGPTError(
            'secure_aggregation = "ckks" needs TenSEAL: pip install "fedgpt[he]" (or tenseal)'
        ) from None
    return tenseal


class CiphertextError(FedGPTError):
    """A ciphertext could not be read (corrupt, tampered or made with another context);
    ``index`` is the position of the offending update, when known."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class CkksParams:
    """N = 8192 (4096 slots per ciphertext). The sum of the clients' ciphertexts needs no
    multiplication, so the modulus chain keeps a single 40-bit level between the special
    primes, [60, 40, 60]: 160 bits (under the 218 of 128-bit security at N = 8192), ~1.4x
    fewer bytes per value than [60, 40, 40, 60] at the same scale 2^40 and the same error
    (benchmarks/he.py)."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    scale_bits: int = 40

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2


def make_keys(params: CkksParams = CkksParams()) -> tuple[bytes, bytes]:
    """(secret context for the clients, public context for the server), serialised."""
    ts = _ts()
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    ctx.global_scale = 2**params.scale_bits
    secret = ctx.serialize(save_secret_key=True)
    public = ctx.serialize(save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    return secret, public


def write_keys(out_dir: str | Path, params: CkksParams = CkksParams()) -> tuple[Path, Path]:
    """Write ``secret_context.bin`` (mode 0600, for the clients only) and
    ``public_context.bin`` (for the server)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    secret, public = make_keys(params)
    sp, pp = out / "secret_context.bin", out / "public_context.bin"
    sp.write_bytes(secret)
    sp.chmod(0o600)
    pp.write_bytes(public)
    return sp, pp


def read_context(path: str | Path, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise FedGPTError(f"{what} '{p}' does not exist (make keys with: fedgpt keys ckks DIR)")
    return p.read_bytes()


class CkksClient:
    """A key holder: encrypts its update, decrypts the aggregate."""

    def __init__(self, secret_context: bytes):
        ts = _ts()
        self.ctx = ts.context_from(secret_context)
        if not self.ctx.is_private():
            raise FedGPTError("the CKKS context given to a client holds no secret key")

    def encrypt(self, flat: torch.Tensor, slots: int = 4096) -> list[bytes]:
        """One ciphertext per chunk of ``slots`` values (chunk by chunk: bounded memory)."""
        ts = _ts()
        x = flat.detach().double().numpy()
        return [
            ts.ckks_vector(self.ctx, x[i : i + slots].tolist()).serialize()
            for i in range(0, x.size, slots)
        ]

    def decrypt(self, chunks: Sequence[bytes], numel: int) -> torch.Tensor:
        ts = _ts()
        out = []
        for i, blob in enumerate(chunks):
            try:
                out.extend(ts.ckks_vector_from(self.ctx, blob).decrypt())
            except Exception as exc:  # noqa: BLE001 - TenSEAL raises plain errors
                raise CiphertextError(f"ciphertext {i} is unreadable: {exc}") from None
        return torch.tensor(out[:numel], dtype=torch.float32)


class CkksServer:
    """Holds only the public context; computes weighted sums of ciphertexts."""

    def __init__(self, public_context: bytes):
        ts = _ts()
        self.ctx = ts.context_from(public_context)
        if self.ctx.is_private():
            raise FedGPTError("the server's CKKS context must not hold the secret key")

    def sum(self, updates: Sequence[Sequence[bytes]]) -> list[bytes]:
        """Σ_k Enc(x_k) (:func:`add`)."""
        return add(self.ctx, updates)


def add(ctx, updates: Sequence[Sequence[bytes]]) -> list[bytes]:
    """Σ_k Enc(x_k), chunk by chunk (additions only), in context ``ctx`` (public or
    secret). Raises ``CiphertextError`` with the index of an update that cannot be read."""
    ts = _ts()
    out = []
    for c in range(len(updates[0])):
        acc = None
        for k, chunks in enumerate(updates):
            try:
                v = ts.ckks_vector_from(ctx, chunks[c])
            except Exception as exc:  # noqa: BLE001
                raise CiphertextError(f"ciphertext {c} unreadable: {exc}", index=k) from None
            acc = v if acc is None else acc + v
        out.append(acc.serialize())
    return out


def num_chunks(numel: int, slots: int = 4096) -> int:
    return math.ceil(numel / slots)
