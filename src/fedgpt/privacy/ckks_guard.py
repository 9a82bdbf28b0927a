"""Verified decryption for CKKS with one key shared by the clients: a key holder decrypts
only a sum it computed itself, of ciphertexts signed by the members of one agreed set.

TenSEAL's CKKS has a single secret key, held by every client, so a key holder could decrypt
whatever the server sends as "the aggregate" — one client's ciphertext included. Each
client therefore (the consistency idea of Bonawitz et al. 2017, Fig. 5, applied to
decryption):

1. signs its ciphertexts with its long-term identity
   (:mod:`fedgpt.privacy.secagg.identity`): ``ciphertext_statement(round, id, chunks)``;
2. signs, once per round, the set U of clients whose ciphertexts the server will sum —
   refusing a set without itself, larger than the round's cohort m, or smaller than
   ``min_members(m)`` = max(2, ⌊m/2⌋ + 1, ⌈fraction·m⌉);
3. decrypts only when the request carries, for one such U, every member's ciphertexts
   with valid signatures and at least ``min_members(m)`` members' signatures on U; it adds
   the ciphertexts itself and decrypts that sum, once per round.

Two sets that each hold more than m/2 signers share an honest signer, who signs one set
per round, so at most one sum per round is ever decrypted, and it covers at least a
majority of the cohort: a server that does not collude with a client obtains only that
sum. A server colluding with any one client reads every update (that client holds the
secret key): against that, use ``secagg``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


def ciphertext_statement(rnd: int, client_id: str, chunks: Sequence[bytes]) -> bytes:
    """What a client signs for the ciphertexts it sends in round ``rnd``."""
    digest = hashlib.sha256(b"".join(hashlib.sha256(c).digest() for c in chunks)).hexdigest()
    return json.dumps(["fedgpt-ckks-ciphertext", rnd, client_id, digest]).encode()


def members_statement(rnd: int, members: Sequence[str]) -> bytes:
    """What a client signs for the set whose sum may be decrypted in round ``rnd``."""
    return json.dumps(["fedgpt-ckks-members", rnd, sorted(members)]).encode()


def min_members(expected: int, fraction: float) -> int:
    """The fewest members a decrypted sum must have: a majority of the cohort, at least
    ``fraction`` of it, and 2."""
    return max(2, expected // 2 + 1, math.ceil(fraction * expected))


@dataclass
class DecryptGuard:
    """One client process's checks (``identities``: its clients' signing keys, or None
    when no registry is used — then signatures are not checked, the rest is)."""

    expected: int
    fraction: float = 0.5
    identities: object = None
    signed: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    decrypted: set[tuple[str, int]] = field(default_factory=set)

    @property
    def need(self) -> int:
        return min_members(self.expected, self.fraction)

    def sign_ciphertexts(self, me: str, rnd: int, chunks: Sequence[bytes]) -> bytes:
        ids = self.identities
        return ids.sign(me, ciphertext_statement(rnd, me, chunks)) if ids is not None else b""

    def sign_members(self, me: str, rnd: int, members: Sequence[str]) -> bytes:
        """2. The signature on ``members`` (refused as the module docstring says)."""
        u = sorted(members)
        if me not in u or len(set(u)) != len(u) or not self.need <= len(u) <= self.expected:
            raise ValueError(
                f"CKKS check refused: a set of {len(u)} is not one this client signs "
                f"(it must hold it, {self.need} to {self.expected} clients)"
            )
        if me in self.signed and self.signed[me][0] == rnd and self.signed[me][1] != u:
            raise ValueError("CKKS check refused: this client signed another set this round")
        self.signed[me] = (rnd, u)
        ids = self.identities
        return ids.sign(me, members_statement(rnd, u)) if ids is not None else b""

    def check_decrypt(
        self, me: str, rnd: int, members: Sequence[str], cts: Mapping[str, Sequence[bytes]],
        ct_sigs: Mapping[str, bytes], set_sigs: Mapping[str, bytes],
    ) -> list[Sequence[bytes]]:  # fmt: skip
        """3. The members' ciphertexts to add, or ValueError: a set this client did not
        sign, a second decryption this round, a missing or unsigned ciphertext, or fewer
        than ``need`` members' signatures on the set."""
        u = sorted(members)
        if self.signed.get(me) != (rnd, u):
            raise ValueError("decryption refused: not the set this client signed")
        if (me, rnd) in self.decrypted:
            raise ValueError("decryption refused: this client already decrypted this round")
        if set(cts) != set(u):
            raise ValueError("decryption refused: the ciphertexts are not those of the set")
        ids = self.identities
        if ids is not None:
            signed = {v: ciphertext_statement(rnd, v, cts[v]) for v in u}
            bad = [v for v in u if not ids.verify(v, ct_sigs.get(v), signed[v])]
            if bad:
                raise ValueError(f"decryption refused: ciphertexts of {bad[0]} are not signed")
            stmt = members_statement(rnd, u)
            valid = [v for v in u if ids.verify(v, set_sigs.get(v), stmt)]
            if len(valid) < self.need:
                raise ValueError(
                    f"decryption refused: {len(valid)} members signed the set, need {self.need}"
                )
        self.decrypted.add((me, rnd))
        return [cts[v] for v in u]
