"""The client's side of SecAgg (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", Fig. 4, with the signatures and the consistency
check of its malicious variant, Fig. 5), with the sparse
neighbour graph of SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead").

Per round, client u:
 0. advertise: fresh X25519 key pairs (c_u for encrypting shares, s_u for masks);
 1. share: a fresh 256-bit self-mask seed b_u; Shamir t-of-k shares of s_u's secret key
    and of b_u for each neighbour v, sealed with AES-GCM under HKDF(X25519(c_u, c_v)),
    associated data (round, u, v);
 2. masked input: y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv) (mod 2^64),
    s_uv = HKDF(X25519(s_u, s_v)), over the neighbours v that reached step 2;
 3. consistency check: u signs the set U3 of clients whose masked inputs the server
    received (once per round; Bonawitz et al. 2017, Fig. 5);
 4. unmask: only with at least t valid signatures of its neighbours on that same U3: for
    each neighbour in U3, its share of b; for each that dropped after step 1, its share of
    s's key — never both for the same client, and computed by u itself from U3.

With identities (:mod:`fedgpt.privacy.secagg.identity`), u signs its advertised keys and
checks its peers' signatures against the registry; without them (unit tests, a trusted
server) the checks that need signatures are skipped.

Post-quantum (hybrid) mode: every key agreement also runs ML-KEM-768 and both secrets go
into HKDF, so recorded traffic stays safe if X25519 is broken later. Each client also
advertises two ML-KEM public keys; for a share, u encapsulates to v's share key and sends
the ciphertext with the sealed share; for the pair mask, the smaller id encapsulates to
the other's mask key. When a client drops, each surviving neighbour reveals the ML-KEM
part of that pair's secret together with its share of the dropped client's X25519 mask
key (the server learns exactly the pairwise secrets it learns in plain SecAgg).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from fedgpt.privacy.secagg import crypto, shamir
from fedgpt.privacy.secagg.identity import keys_statement, survivors_statement

SHARE_INFO = b"fedgpt/secagg/share-key"
MASK_INFO = b"fedgpt/secagg/pairwise-mask"


def salt(rnd: int) -> bytes:
    return f"fedgpt-secagg-round-{rnd}".encode()


def ad(rnd: int, sender: str, recipient: str) -> bytes:
    return json.dumps([rnd, sender, recipient]).encode()


@dataclass
class RoundState:
    rnd: int
    x: np.ndarray  # the encoded input over Z_2^64
    c_sk: object
    s_sk: bytes
    c_pk: bytes
    s_pk: bytes
    b: bytes = b""
    peers: dict[str, tuple[bytes, ...]] = field(default_factory=dict)  # v -> public keys
    inbox: dict[str, list[bytes]] = field(default_factory=dict)  # from v: sealed share, KEM cts
    revealed: set[str] = field(default_factory=set)
    kem: tuple | None = None  # post-quantum: (share-key KEM sk, mask KEM sk)
    kem_pks: tuple[bytes, bytes] = (b"", b"")
    pq_mask: dict[str, bytes] = field(default_factory=dict)  # v -> ML-KEM part of s_uv
    t: int = 0  # the threshold this client accepted in step 1
    signed: list[str] | None = None  # the U3 it signed in the consistency check
    min_sum: int = 0  # distributed DP: the fewest summands its noise share was sized for

    def public_keys(self) -> dict[str, list[bytes]]:
        keys = {"c_pk": [self.c_pk], "s_pk": [self.s_pk]}
        if self.kem is not None:
            keys |= {"kc_pk": [self.kem_pks[0]], "ks_pk": [self.kem_pks[1]]}
        return keys


def advertise(rnd: int, x: np.ndarray, post_quantum: bool = False) -> RoundState:
    c_sk, c_pk = crypto.keypair()
    s_sk_obj, s_pk = crypto.keypair()
    st = RoundState(rnd, x, c_sk, crypto.private_bytes(s_sk_obj), c_pk, s_pk)
    if post_quantum:
        (kc, kc_pk), (ks, ks_pk) = crypto.kem_keypair(), crypto.kem_keypair()
        st.kem, st.kem_pks = (kc, ks), (kc_pk, ks_pk)
    return st


def min_threshold(degree: int, fraction: float) -> int:
    """The smallest Shamir threshold a client accepts for ``degree`` neighbours: more than
    half of them (so no two disjoint sets of its neighbours can each rebuild one of its
    secrets), at least ``fraction`` of them (its own ``privacy.secagg_threshold``), and 2."""
    return max(2, degree // 2 + 1, math.ceil(fraction * degree))


def check_request(me: str, peers, index: dict, threshold, fraction: float) -> None:
    """Refuse a share request whose parameters the server chose against this client: a
    threshold below :func:`min_threshold` or above the number of neighbours, or Shamir
    evaluation points that are not distinct integers in [1, p) (x = 0 or p would make the
    share the secret itself)."""
    deg = len(peers)
    need = min_threshold(deg, fraction)
    if not isinstance(threshold, int) or not need <= threshold <= deg:
        raise ValueError(
            f"threshold {threshold!r} refused: {deg} neighbours need a threshold in [{need}, {deg}]"
        )
    xs = [index.get(v) for v in [me, *peers]]
    if any(type(x) is not int or not 1 <= x < shamir.PRIME for x in xs):
        raise ValueError("evaluation points refused: each must be an integer in [1, p)")
    if len(set(xs)) != len(xs):
        raise ValueError("evaluation points refused: two clients share one point")


def share(
    st: RoundState,
    me: str,
    peers: dict[str, tuple[bytes, bytes]],
    index: dict[str, int],
    threshold: int,
    fraction: float = 0.5,
    sigs: dict[str, bytes] | None = None,
    identities=None,
) -> dict[str, bytes]:
    """Sealed shares of (s_sk, b) for each neighbour: {v: ciphertext}, once the request is
    checked (:func:`check_request`)."""
    import secrets

    check_request(me, peers, index, threshold, fraction)
    if identities is not None:
        for v, keys in peers.items():
            if not identities.verify(v, sigs.get(v), keys_statement(st.rnd, v, keys)):
                raise ValueError(f"share request refused: {v}'s keys carry no valid signature")
    st.peers, st.t = dict(peers), threshold
    st.b = secrets.token_bytes(32)
    xs = [index[v] for v in peers]
    s_shares = shamir.split(st.s_sk, threshold, xs)
    b_shares = shamir.split(st.b, threshold, xs)
    out = {}
    for v, keys in peers.items():
        extra, pq = [], b""
        if st.kem is not None:
            pq, ct = crypto.kem_encapsulate(keys[2])
            extra.append(ct)
            if me < v:
                st.pq_mask[v], ct_s = crypto.kem_encapsulate(keys[3])
                extra.append(ct_s)
        key = crypto.agree(st.c_sk, keys[0], SHARE_INFO, salt(st.rnd), pq)
        x = index[v]
        body = json.dumps(
            {"from": me, "to": v, "x": x, "s": hex(s_shares[x]), "b": hex(b_shares[x])}
        ).encode()
        out[v] = [crypto.seal(key, body, ad(st.rnd, me, v)), *extra]
    return out


def masked_input(st: RoundState, me: str, inbox: dict[str, list[bytes]], alive: list[str]):
    """y_u over Z_2^64, masked with the self mask and the pairwise masks of the neighbours
    that reached this step (their shares are in ``inbox``)."""
    st.inbox = dict(inbox)
    if st.kem is not None:  # the pair-mask secrets the smaller ids encapsulated to me
        for v, parts in inbox.items():
            if v < me and len(parts) > 2:
                st.pq_mask[v] = crypto.kem_decapsulate(st.kem[1], parts[2])
    y = crypto.add_prg(st.x.copy(), st.b)
    for v in alive:
        if v != me and v in st.peers:
            pq = st.pq_mask.get(v, b"") if st.kem is not None else b""
            seed = crypto.agree(st.s_sk, st.peers[v][1], MASK_INFO, salt(st.rnd), pq)
            crypto.add_prg(y, seed, 1 if v > me else -1)  # +PRG(s_uv) if v > me, else −
    return y


def sign_survivors(st: RoundState, me: str, u3: list[str], identities=None) -> bytes:
    """3. The signature on U3 (empty without an identity). Refused for a set that does
    not hold this client, holds fewer than t + 1 clients (or, under distributed DP, fewer
    than the summands its noise share was sized for), or differs from one it signed."""
    u3 = sorted(u3)
    if me not in u3 or len(set(u3)) != len(u3) or len(u3) < st.t + 1:
        raise ValueError("consistency check refused: not a survivor set this client can sign")
    if len(u3) < st.min_sum:
        raise ValueError(
            f"consistency check refused: {len(u3)} survivors, but this client's noise is "
            f"sized for a sum of at least {st.min_sum}"
        )
    if st.signed is not None and st.signed != u3:
        raise ValueError("consistency check refused: this client signed another set this round")
    st.signed = u3
    return identities.sign(me, survivors_statement(st.rnd, u3)) if identities else b""


def unmask_checked(st: RoundState, me: str, u3: list[str], sigs: dict, identities=None):
    """4. :func:`unmask` for the U3 this client signed, once at least t of its neighbours
    signed the same set; survivors and dropped are this client's own reading of U3."""
    if st.signed is None or sorted(u3) != st.signed:
        raise ValueError("unmask refused: not the survivor set this client signed")
    if identities is not None:
        stmt = survivors_statement(st.rnd, u3)
        valid = [v for v in st.peers if v in u3 and identities.verify(v, sigs.get(v), stmt)]
        if len(valid) < st.t:
            raise ValueError(
                f"unmask refused: {len(valid)} of its neighbours signed the survivor set, "
                f"need {st.t}"
            )
    alive = set(u3)
    return unmask(st, me, set(st.inbox) & alive, set(st.inbox) - alive)


def unmask(st: RoundState, me: str, survivors: set[str], dropped: set[str]):
    """(b-shares of survivors, s-shares of dropped, senders whose share was tampered)."""
    if survivors & dropped:
        raise ValueError("a client cannot be both a survivor and dropped")
    b_out, s_out, bad = {}, {}, []
    for u, parts in st.inbox.items():
        if u not in survivors and u not in dropped:
            continue
        if u in st.revealed:
            raise ValueError(f"shares of {u} were already revealed this round")
        try:
            pq = crypto.kem_decapsulate(st.kem[0], parts[1]) if st.kem is not None else b""
            key = crypto.agree(st.c_sk, st.peers[u][0], SHARE_INFO, salt(st.rnd), pq)
            body = json.loads(crypto.open_sealed(key, parts[0], ad(st.rnd, u, me)))
        except (crypto.TamperedShare, IndexError):
            bad.append(u)
            continue
        st.revealed.add(u)
        if u in survivors:
            b_out[u] = (body["x"], body["b"])
        else:  # + the ML-KEM part of our pair secret (post-quantum), which only we know
            s_out[u] = (body["x"], body["s"], st.pq_mask.get(u, b"").hex())
    return b_out, s_out, bad


def handle(store: dict, cid: str, msg, fraction: float = 0.5, identities=None):
    """The message steps after training, for a client whose round state lives in
    ``store[cid]``: ``secagg/share``, ``secagg/masked``, ``secagg/check``,
    ``secagg/unmask``. (``secagg/train`` is the caller's: it trains, encodes and calls
    ``advertise``.)"""
    from fedgpt.messages import Message

    c, rnd = msg.config, int(msg.config["round"])
    st = store.get(cid)
    if st is None or st.rnd != rnd:
        raise ValueError(f"no SecAgg state for round {rnd}")
    if msg.type == "secagg/share":
        peers = {k[3:]: tuple(v) for k, v in msg.blobs.items() if k.startswith("pk:")}
        sigs = {k[4:]: v[0] for k, v in msg.blobs.items() if k.startswith("sig:") and v}
        sealed = share(st, cid, peers, c["index"], c["threshold"], fraction, sigs, identities)
        return Message(
            "secagg/shares", {"round": rnd}, {}, {f"to:{v}": parts for v, parts in sealed.items()}
        )
    if msg.type == "secagg/masked":
        inbox = {k.removeprefix("from:"): list(v) for k, v in msg.blobs.items()}
        y = masked_input(st, cid, inbox, list(c["alive"]))
        return Message("secagg/masked_input", {"round": rnd}, {}, {"y": [y.tobytes()]})
    if msg.type == "secagg/check":
        sig = sign_survivors(st, cid, list(c["u3"]), identities)
        return Message("secagg/signature", {"round": rnd}, {}, {"sig": [sig]} if sig else {})
    if msg.type == "secagg/unmask":
        sigs = {k[4:]: v[0] for k, v in msg.blobs.items() if k.startswith("sig:") and v}
        b, s_, bad = unmask_checked(st, cid, list(c["u3"]), sigs, identities)
        del store[cid]
        return Message("secagg/shares_out", {"round": rnd, "b": b, "s": s_, "tampered": bad})
    raise ValueError(f"unknown message type {msg.type!r}")


def keys_message(st: RoundState, num_examples: int, metrics: dict, me: str = "", identities=None):
    """The reply to ``secagg/train``: the public keys, signed with the client's identity
    when it has one (and the client's n_k, metrics)."""
    from fedgpt.messages import Message

    keys = st.public_keys()
    if identities is not None:
        flat = [k[0] for k in keys.values()]
        keys["sig"] = [identities.sign(me, keys_statement(st.rnd, me, flat))]
    return Message(
        "secagg/keys",
        {"round": st.rnd, "num_examples": num_examples, "metrics": metrics},
        {},
        keys,
    )
