"""What a FedGPT client must remember between messages, as opaque bytes
(:meth:`ClientApp.state_dict` / :meth:`ClientApp.load_state_dict`), so that any runtime
can persist it without knowing what it holds. The Flower runtime starts a fresh
ClientApp process for every message and keeps these bytes in the node's
``context.state`` between them:

* ``secagg_state``: each client's SecAgg secrets of the current round (X25519 and, in
  post-quantum mode, ML-KEM private keys, the self-mask seed, received shares);
* ``releases``: local-DP updates each client has released;
* ``dp_steps``: DP-SGD accounting history (noise multiplier, sample rate) per step;
* ``opt_memory``: optimiser state (``client.keep_optimizer_state``);
* ``fedmd``: FedMD's own client models (``federation.distill = "fedmd"``).

``context.state`` never leaves the node (Flower keeps it in the SuperNode's memory for the
run), but it is handed to each ClientApp process over the node-local Runtime API.
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from fedgpt.privacy.secagg.client import RoundState

KEYS = ("releases", "dp_steps", "secagg", "opt_memory", "fedmd")


def _hex(b: bytes) -> str:
    return b.hex()


def dump_round_state(st: RoundState) -> dict:
    """A SecAgg client's round state as JSON-able values (private keys as raw bytes)."""
    from fedgpt.privacy.secagg.crypto import private_bytes

    return {
        "rnd": st.rnd,
        "x": st.x.astype("<u8").tobytes().hex(),
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
    }


def load_round_state(d: dict) -> RoundState:
    """The inverse of :func:`dump_round_state`."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    kem = None
    if d["kem"] is not None:
        from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

        kem = tuple(MLKEM768PrivateKey.from_seed_bytes(bytes.fromhex(k)) for k in d["kem"])
    return RoundState(
        rnd=int(d["rnd"]),
        x=np.frombuffer(bytes.fromhex(d["x"]), dtype="<u8").astype(np.uint64),
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
    )


def dump_client_state(app) -> dict[str, bytes]:
    """The remembered state of a FedGPT ``ClientApp``, one bytes value per kind."""
    buf = io.BytesIO()
    torch.save(app.opt_memory, buf)
    return {
        "releases": json.dumps(app.releases).encode(),
        "dp_steps": json.dumps(app.dp_steps).encode(),
        "secagg": json.dumps(
            {cid: dump_round_state(st) for cid, st in app.secagg_state.items()}
        ).encode(),
        "opt_memory": buf.getvalue(),
        "fedmd": _tensors(app.fedmd.models if app.fedmd is not None else {}),
    }


def _tensors(d: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(dict(d), buf)
    return buf.getvalue()


def load_client_state(app, saved: dict[str, bytes]) -> None:
    """Restore what :func:`dump_client_state` saved into a fresh ``ClientApp``."""
    if not saved:
        return
    app.releases = {k: int(v) for k, v in json.loads(saved["releases"]).items()}
    app.dp_steps = {
        k: [(float(z), float(q)) for z, q in v] for k, v in json.loads(saved["dp_steps"]).items()
    }
    app.secagg_state = {cid: load_round_state(d) for cid, d in json.loads(saved["secagg"]).items()}
    app.opt_memory = torch.load(io.BytesIO(saved["opt_memory"]), weights_only=True)
    if app.fedmd is not None and "fedmd" in saved:
        app.fedmd.models = torch.load(io.BytesIO(saved["fedmd"]), weights_only=True)
