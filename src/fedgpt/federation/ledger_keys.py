"""The ledger's signing key and where it lives.

The private key that signs a run's ledger is kept *outside* the run folder: in the
per-user key store (``$FEDGPT_HOME/keys/ledger_key.pem``; ``FEDGPT_HOME`` defaults to
``$XDG_DATA_HOME/fedgpt``, else ``~/.local/share/fedgpt``) or at ``runtime.ledger_key``.
The run folder holds only the public key (``ledger_public_key.pem``). One key signs every
run of its owner, so its fingerprint — SHA-256 of the raw 32-byte Ed25519 public key, hex —
can be pinned once (``fedgpt verify RUN --fingerprint HEX``). Runs made before the key
store kept ``server_key.pem`` in the run folder; resume still finds it there.

Keys are Ed25519 (RFC 8032) through ``cryptography``; a new one comes from the OS CSPRNG
and is written with mode 0600, created atomically (two runs starting at once get the
same key, never a half-written one).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fedgpt.errors import RunError
from fedgpt.files import fedgpt_home

PUBLIC_KEY = "ledger_public_key.pem"
LEGACY_PRIVATE_KEY = "server_key.pem"  # where runs before the key store kept the key
STORE_KEY = "keys/ledger_key.pem"


def key_path(run_dir: Path, ledger_key: str) -> Path:
    """Where a run's signing key is: ``runtime.ledger_key``; else a legacy
    ``RUN_DIR/server_key.pem``; else the per-user key store."""
    if ledger_key:
        return Path(ledger_key)
    legacy = Path(run_dir) / LEGACY_PRIVATE_KEY
    return legacy if legacy.is_file() else fedgpt_home() / STORE_KEY


def load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise RunError(f"ledger key '{path}' is unreadable: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RunError(f"ledger key '{path}' is not an Ed25519 private key")
    return key


def load_or_create(path: Path):
    """The key at ``path``, or a fresh one created there (mode 0600, atomically)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists():
        if not path.is_file():
            raise RunError(f"ledger key '{path}' is not a file")
        return load_private_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another process created it first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise RunError(f"ledger key '{path}': cannot be created ({exc.strerror})") from None
    return load_private_key(path)


def public_raw(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_raw_hex(public_key) -> str:
    return public_raw(public_key).hex()


def fingerprint(public_key) -> str:
    """SHA-256 (hex) of the raw 32-byte public key."""
    return hashlib.sha256(public_raw(public_key)).hexdigest()


def public_pem(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def public_from_hex(raw_hex: str):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(raw_hex))


def pinned_fingerprint(public_key_file: Path | None, fingerprint_hex: str | None) -> str | None:
    """The fingerprint a verifier pins (``--public-key FILE`` or ``--fingerprint HEX``), or
    None; a one-line ``RunError`` for an unreadable file or a malformed fingerprint."""
    if public_key_file is not None and fingerprint_hex:
        raise RunError("give --public-key or --fingerprint, not both")
    if public_key_file is not None:
        try:
            return fingerprint(load_public_key(public_key_file))
        except (OSError, ValueError, TypeError) as exc:
            why = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
            msg = f"--public-key '{public_key_file}': not an Ed25519 key ({why})"
            raise RunError(msg) from None
    if fingerprint_hex:
        fp = fingerprint_hex.strip().lower().removeprefix("sha256:")
        if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
            raise RunError("--fingerprint: expected 64 hex digits (SHA-256 of the public key)")
        return fp
    return None
