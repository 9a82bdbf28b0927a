"""The cryptographic primitives of secure aggregation, all from ``cryptography``:
X25519 key agreement (hybrid with ML-KEM-768 in post-quantum mode), HKDF-SHA256,
AES-256-GCM for shares in transit (associated data binds round, sender and recipient),
and a ChaCha20 keystream as the PRG that expands a 256-bit seed into a mask vector over
Z_{2^64}."""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedgpt.errors import FedGPTError


class TamperedShare(FedGPTError):
    """An encrypted share failed authentication (tampered, misrouted or replayed)."""


def keypair() -> tuple[X25519PrivateKey, bytes]:
    sk = X25519PrivateKey.generate()
    return sk, sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(sk: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    return sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def agree(
    sk: X25519PrivateKey | bytes, peer_public: bytes, info: bytes, salt: bytes, pq: bytes = b""
) -> bytes:
    """HKDF-SHA256(X25519(sk, peer) ‖ pq, salt, info) → 32 bytes; ``pq`` is the ML-KEM-768
    shared secret in hybrid (post-quantum) mode, empty otherwise."""
    if isinstance(sk, bytes):
        sk = X25519PrivateKey.from_private_bytes(sk)
    shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(shared + pq)


def usable_public_key(kind: str, key: bytes) -> bool:
    """Whether ``key`` is a public key a peer can use: an X25519 key (``c_pk``, ``s_pk``)
    that is not of low order (the exchange would give the all-zero secret), or an
    ML-KEM-768 encapsulation key (``kc_pk``, ``ks_pk``)."""
    try:
        if kind in ("c_pk", "s_pk"):
            X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(key))
        else:
            from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey

            MLKEM768PublicKey.from_public_bytes(key)
    except (ValueError, TypeError):
        return False
    return True


def kem_keypair():
    """An ML-KEM-768 (FIPS 203) key pair: (private key, 1,184-byte public key)."""
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

    sk = MLKEM768PrivateKey.generate()
    return sk, sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def kem_encapsulate(public: bytes) -> tuple[bytes, bytes]:
    """(32-byte shared secret, 1,088-byte ciphertext) for the holder of ``public``."""
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey

    return MLKEM768PublicKey.from_public_bytes(public).encapsulate()


def kem_decapsulate(sk, ciphertext: bytes) -> bytes:
    try:
        return sk.decapsulate(ciphertext)
    except ValueError:
        raise TamperedShare("ML-KEM ciphertext is malformed") from None


def seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, blob: bytes, ad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:12], blob[12:], ad)
    except (InvalidTag, ValueError):
        raise TamperedShare("encrypted share failed authentication") from None


_SCRATCH: dict[int, tuple[bytearray, memoryview]] = {}  # bytes -> (zeros in, keystream out)


def _keystream(seed: bytes, n: int, dtype=np.uint64) -> np.ndarray:
    """The keystream in a buffer reused from call to call (valid until the next call):
    expanding a mask allocates nothing, so a round of many masks does not fault in fresh
    pages for each (``update_into``, the library's in-place form)."""
    size = n * np.dtype(dtype).itemsize
    if size not in _SCRATCH:
        _SCRATCH.clear()  # one size at a time: the round's vector length
        _SCRATCH[size] = (bytearray(size), memoryview(bytearray(size + 64)))
    zeros, out = _SCRATCH[size]
    enc = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    enc.update_into(zeros, out)
    return np.frombuffer(out, dtype=dtype, count=n)


def add_prg(acc: np.ndarray, seed: bytes, sign: int = 1) -> np.ndarray:
    """``acc`` ± PRG(``seed``) over Z_2^64 (or Z_2^32 for a uint32 ``acc``), in place
    (no temporary vector)."""
    m = _keystream(seed, acc.size, acc.dtype)
    (np.add if sign > 0 else np.subtract)(acc, m, out=acc)
    return acc
