"""Long-term client identities for SecAgg against an active server (Bonawitz et al. 2017,
§4 and Fig. 5, "malicious" variant: a PKI of signing keys).

Each client holds an Ed25519 signing key; every client knows the federation's registry of
public keys, provisioned out of band (like the SuperNode keys of a Flower deployment), not
sent by the server. A client signs the public keys it advertises each round and, in the
consistency check, the set of clients whose masked inputs the server received; its peers
verify both against the registry. So the server can neither substitute keys, nor add
clients of its own, nor tell two clients two different survivor sets.

On disk (``privacy.secagg_identities``, written by ``fedgpt keys secagg``):
``registry.json`` (client id -> public key, hex) and ``keys/<n>.key`` (one client's raw
private key, hex; ``keys/index.json`` maps client ids to file names). A node needs the
registry and its own clients' keys only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from fedgpt.errors import ConfigError


def _public(sk: Ed25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Identities:
    """``own``: the private keys of the clients this process speaks for; ``registry``:
    every client's public key."""

    def __init__(self, own: Mapping[str, Ed25519PrivateKey], registry: Mapping[str, bytes]):
        self.own, self.registry = dict(own), dict(registry)

    @classmethod
    def generate(cls, client_ids: Iterable[str]) -> Identities:
        own = {c: Ed25519PrivateKey.generate() for c in client_ids}
        return cls(own, {c: _public(k) for c, k in own.items()})

    def public(self) -> Identities:
        """The registry alone (what the server may hold)."""
        return Identities({}, self.registry)

    def sign(self, client_id: str, data: bytes) -> bytes:
        return self.own[client_id].sign(data)

    def verify(self, client_id: str, signature: bytes, data: bytes) -> bool:
        key = self.registry.get(client_id)
        if key is None or not isinstance(signature, bytes):
            return False
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def write(self, folder: str | Path) -> Path:
        out = Path(folder)
        (out / "keys").mkdir(parents=True, exist_ok=True)
        (out / "registry.json").write_text(
            json.dumps({c: k.hex() for c, k in sorted(self.registry.items())}, indent=1)
        )
        index = {c: f"{i}.key" for i, c in enumerate(sorted(self.own))}
        for c, name in index.items():
            raw = self.own[c].private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            path = out / "keys" / name
            path.write_text(raw.hex())
            path.chmod(0o600)
        (out / "keys" / "index.json").write_text(json.dumps(index, indent=1))
        return out

    @classmethod
    def read(cls, folder: str | Path, clients: Iterable[str] | None = None) -> Identities:
        """The registry and the private keys of ``clients`` (all present when None)."""
        root = Path(folder)
        try:
            registry = {c: bytes.fromhex(k) for c, k in json.loads(
                (root / "registry.json").read_text()).items()}  # fmt: skip
            index = json.loads((root / "keys" / "index.json").read_text())
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"privacy.secagg_identities '{root}': {exc}") from None
        wanted = list(index) if clients is None else list(clients)
        own = {}
        for c in wanted:
            if c not in index:
                raise ConfigError(f"privacy.secagg_identities '{root}' holds no key of {c!r}")
            try:
                raw = bytes.fromhex((root / "keys" / index[c]).read_text().strip())
                own[c] = Ed25519PrivateKey.from_private_bytes(raw)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"privacy.secagg_identities, key of {c!r}: {exc}") from None
            if _public(own[c]) != registry.get(c):
                raise ConfigError(f"privacy.secagg_identities: {c!r}'s key is not its registry's")
        return cls(own, registry)


def keys_statement(rnd: int, client_id: str, keys: Iterable[bytes]) -> bytes:
    """What a client signs when it advertises its round keys."""
    return json.dumps(["fedgpt-secagg-keys", rnd, client_id, [k.hex() for k in keys]]).encode()


def survivors_statement(rnd: int, u3: Iterable[str]) -> bytes:
    """What a client signs in the consistency check: the clients that sent masked inputs."""
    return json.dumps(["fedgpt-secagg-survivors", rnd, sorted(u3)]).encode()
