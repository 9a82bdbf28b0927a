"""The client side of each secure sum (``privacy.secure_aggregation``): what a client does
beyond training so that the server obtains only a sum.

* ``secagg`` (:class:`SecAggClient`): the four SecAgg steps (Bonawitz et al. 2017, Fig. 4;
  :mod:`fedgpt.privacy.secagg.client`); after training, the update is encoded over
  Z_2^64 with weight w_k = min(n_k, cap)/cap (:func:`fedgpt.privacy.secagg.quantize.encode`),
  and the per-round secrets stay in :attr:`SecAggClient.rounds` between messages;
* ``ckks`` (:class:`CkksEncryption`): the reply's plaintext Δ_k is replaced by the CKKS
  ciphertexts of n_k·Δ_k (the weight rides inside, so the server only adds), and the
  client decrypts the aggregate the server sends back (:mod:`fedgpt.privacy.ckks`).

Each keeps its state as bytes (``state_dict``) so any runtime can persist it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import numpy as np
import torch

from fedgpt.messages import Message
from fedgpt.privacy.secagg.client import RoundState


class SecureSumClient:
    """One secure sum's client side. ``prefix``: the message types it answers."""

    name: ClassVar[str] = ""
    prefix: ClassVar[str] = ""

    def encode(self, client_id: str, reply: Message) -> Message:
        """A ``train/result`` as it goes on the wire."""
        return reply

    def handle(self, client_id: str, msg: Message, train: Callable) -> Message:
        raise ValueError(f"unknown message type {msg.type!r}")

    def state_dict(self) -> dict[str, bytes]:
        return {}

    def load_state_dict(self, saved: Mapping[str, bytes]) -> None:
        pass


class SecAggClient(SecureSumClient):
    name, prefix = "secagg", "secagg/"

    def __init__(self, threshold_fraction: float = 0.5, identities=None, codec=None):
        self.rounds: dict[str, RoundState] = {}  # each client's secrets of the current round
        self.fraction = threshold_fraction  # its own privacy.secagg_threshold, not the server's
        self.identities = identities  # privacy.secagg.identity.Identities, or None
        self.codec = codec  # distributed DP's privacy.skellam.SkellamCodec, or None

    def handle(self, client_id: str, msg: Message, train: Callable) -> Message:
        from fedgpt.privacy.secagg import client as sa
        from fedgpt.privacy.secagg.quantize import encode

        if msg.type != "secagg/train":
            return sa.handle(self.rounds, client_id, msg, self.fraction, self.identities)
        c, rnd = msg.config, int(msg.config["round"])
        reply = train(client_id, Message("train", {"round": rnd, "seed": c["seed"]}, msg.tensors))
        if reply.type != "train/result":
            return reply
        n, metrics = reply.config["num_examples"], reply.config["metrics"]
        if self.codec is not None:  # clipped, rotated, rounded and noised by this client
            x = self.codec.encode(reply.tensors["delta"], int(c["rotation"]), int(c["seed"]))
        else:
            w = min(n, c["weight_cap"]) / c["weight_cap"]
            loss = metrics.get("train_loss")
            x = encode(reply.tensors["delta"], w, c["range"], c["bits"], loss, c.get("word", 64))
        st = self.rounds[client_id] = sa.advertise(rnd, x, bool(c.get("post_quantum")))
        st.min_sum = self.codec.min_sum if self.codec is not None else 0
        # n_k and the loss ride inside the masked vector; only a DP-SGD client's own
        # epsilon (which the server must see to report the run's) travels beside it
        kept = {k: metrics[k] for k in ("epsilon",) if k in metrics}
        return sa.keys_message(st, 1, kept, client_id, self.identities)

    def state_dict(self) -> dict[str, bytes]:
        return {
            "secagg": json.dumps(
                {c: dump_round_state(st) for c, st in self.rounds.items()}
            ).encode()
        }

    def load_state_dict(self, saved: Mapping[str, bytes]) -> None:
        if "secagg" in saved:
            self.rounds = {c: load_round_state(d) for c, d in json.loads(saved["secagg"]).items()}


class CkksEncryption(SecureSumClient):
    """``ckks``: for a client that holds the secret context (``secret``); it decrypts only
    a sum it adds up itself, of one agreed set of signed ciphertexts
    (:mod:`fedgpt.privacy.ckks_guard`; ``expected``: the round's cohort m, ``identities``:
    the clients' signing keys)."""

    name, prefix = "ckks", "ckks/"

    def __init__(self, secret: bytes, identities=None, fraction: float = 0.5, expected: int = 0):
        from fedgpt.privacy.ckks import CkksClient
        from fedgpt.privacy.ckks_guard import DecryptGuard

        self.ckks = CkksClient(secret)
        self.guard = DecryptGuard(expected, fraction, identities)

    def encode(self, client_id: str, reply: Message) -> Message:
        """Encrypt [n·Δ ; n ; n·ℓ] and sign the ciphertexts: the weight and the loss ride
        inside, so the server reads only their sums; the reply says n = 1 and no metric
        (but a DP-SGD client's own ε)."""
        c = reply.config
        n, loss = float(c["num_examples"]), c["metrics"].get("train_loss")
        known = loss is not None and math.isfinite(loss)
        meta = torch.tensor([n, n * loss if known else 0.0, n if known else 0.0])
        chunks = self.ckks.encrypt(torch.cat([reply.tensors["delta"].double() * n, meta]))
        kept = {k: c["metrics"][k] for k in ("epsilon",) if k in c["metrics"]}
        config = {**c, "num_examples": 1, "metrics": kept}
        blobs = {"delta_ckks": chunks}
        if sig := self.guard.sign_ciphertexts(client_id, int(c["round"]), chunks):
            blobs["ckks_sig"] = [sig]
        return Message(reply.type, config, {}, blobs)

    def handle(self, client_id: str, msg: Message, train: Callable) -> Message:
        from fedgpt.privacy.ckks import add

        rnd, members = int(msg.config["round"]), list(msg.config.get("members", []))
        if msg.type == "ckks/check":
            sig = self.guard.sign_members(client_id, rnd, members)
            return Message("ckks/signature", {"round": rnd}, {}, {"sig": [sig]} if sig else {})
        if msg.type != "ckks/decrypt":
            raise ValueError(f"unknown message type {msg.type!r}")
        b = msg.blobs
        cts = {k[3:]: v for k, v in b.items() if k.startswith("ct:")}
        ct_sigs = {k[6:]: v[0] for k, v in b.items() if k.startswith("ctsig:") and v}
        set_sigs = {k[4:]: v[0] for k, v in b.items() if k.startswith("sig:") and v}
        parts = self.guard.check_decrypt(client_id, rnd, members, cts, ct_sigs, set_sigs)
        agg = self.ckks.decrypt(add(self.ckks.ctx, parts), int(msg.config["numel"]))
        return Message("ckks/aggregate", {"round": rnd}, {"aggregate": agg})

    def state_dict(self) -> dict[str, bytes]:
        g = self.guard
        return {"ckks": json.dumps({"signed": g.signed, "decrypted": sorted(g.decrypted)}).encode()}

    def load_state_dict(self, saved: Mapping[str, bytes]) -> None:
        if "ckks" in saved:
            d = json.loads(saved["ckks"])
            self.guard.signed = {c: (int(r), list(u)) for c, (r, u) in d["signed"].items()}
            self.guard.decrypted = {(c, int(r)) for c, r in d["decrypted"]}


def _hex(b: bytes) -> str:
    return b.hex()


def dump_round_state(st: RoundState) -> dict:
    """A SecAgg client's round state as JSON-able values (private keys as raw bytes)."""
    from fedgpt.privacy.secagg.crypto import private_bytes

    return {
        "rnd": st.rnd,
        "x": st.x.astype(f"<u{st.x.itemsize}").tobytes().hex(),
        "word": 8 * st.x.itemsize,
        "c_sk": private_bytes(st.c_sk).hex(),
        "s_sk": st.s_sk.hex(),
        "c_pk": st.c_pk.hex(),
        "s_pk": st.s_pk.hex(),
        "b": st.b.hex(),
        "peers": {v: [_hex(k) for k in keys] for v, keys in st.peers.items()},
        "inbox": {v: [_hex(p) for p in parts] for v, parts in st.inbox.items()},
        "revealed": sorted(st.revealed),
        "kem": None if st.kem is None else [k.private_bytes_raw().hex() for k in st.kem],
        "kem_pks": [_hex(k) for k in st.kem_pks],
        "pq_mask": {v: _hex(s) for v, s in st.pq_mask.items()},
        "t": st.t,
        "signed": st.signed,
        "min_sum": st.min_sum,
    }


def _words(hexed: str, word: int) -> np.ndarray:
    from fedgpt.privacy.secagg.quantize import WORDS

    return np.frombuffer(bytes.fromhex(hexed), dtype=f"<u{word // 8}").astype(WORDS[word])


def load_round_state(d: dict) -> RoundState:
    """The inverse of :func:`dump_round_state`."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    kem = None
    if d["kem"] is not None:
        from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

        kem = tuple(MLKEM768PrivateKey.from_seed_bytes(bytes.fromhex(k)) for k in d["kem"])
    return RoundState(
        rnd=int(d["rnd"]),
        x=_words(d["x"], int(d.get("word", 64))),
        c_sk=X25519PrivateKey.from_private_bytes(bytes.fromhex(d["c_sk"])),
        s_sk=bytes.fromhex(d["s_sk"]),
        c_pk=bytes.fromhex(d["c_pk"]),
        s_pk=bytes.fromhex(d["s_pk"]),
        b=bytes.fromhex(d["b"]),
        peers={v: tuple(bytes.fromhex(k) for k in ks) for v, ks in d["peers"].items()},
        inbox={v: [bytes.fromhex(p) for p in ps] for v, ps in d["inbox"].items()},
        revealed=set(d["revealed"]),
        kem=kem,
        kem_pks=tuple(bytes.fromhex(k) for k in d["kem_pks"]),
        pq_mask={v: bytes.fromhex(s) for v, s in d["pq_mask"].items()},
        t=int(d.get("t", 0)),
        signed=d.get("signed"),
        min_sum=int(d.get("min_sum", 0)),
    )
