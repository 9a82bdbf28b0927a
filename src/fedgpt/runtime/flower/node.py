"""A node's side of FedGPT over Flower: FedGPT's
:class:`~fedgpt.federation.client_app.ClientApp` behind a SuperNode.

:func:`handle_content` decodes the batch a Flower message carries, hands each FedGPT
message to FedGPT's ``ClientApp`` (the same handler the in-process runtime calls) and
encodes the replies; it runs in the node's agent (:mod:`fedgpt.runtime.flower.agent`) or,
without one, in the ``flwr-clientapp`` process (:mod:`fedgpt.runtime.flower.client_app`).
What else it does is what Flower's process model needs:

* **Who am I.** The SuperNode's ``--node-config`` names the node's clients:
  ``client-id`` (comma-separated ids) and/or ``data-path`` (a FedGPT user-data folder, one
  sub-folder per client, see :mod:`fedgpt.data.userdata`). Optional ``model-path`` (this
  node's copy of the shared checkpoint, overrides ``model.path``) and ``ckks-keys`` (the
  folder holding ``secret_context.bin``, overrides ``privacy.ckks_keys``), ``receipts-dir``
  (where the node's clients keep the server's signed receipts; default
  ``$FEDGPT_HOME/receipts`` on the node's machine), ``agent`` / ``agent-idle``.
* **The run's configuration** arrives with the first (``fedgpt/hello``) message and is
  kept in ``context.state`` for the rest of the run, with the run-wide values only the
  server knows (``fedgpt/setup``: all client ids, the local-DP noise multiplier), which
  travels at the head of the node's first batch of the run. If the setup fails, the rest
  of that batch is refused with it.
* **Memory between messages.** Each message may run in a fresh process, so the FedGPT
  client's state (SecAgg secrets within a round, DP release counts and accounting,
  optimiser memory) is saved to ``context.state`` after every message and restored before
  the next (``ClientApp.state_dict``, fedgpt.federation.client_state).
* **Memory across restarts.** ``context.state`` ends with the Flower run, so the same state
  also goes to the node's own disk keyed by the run folder's identity
  (:mod:`fedgpt.runtime.flower.node_state`, node-config ``state-dir``); a resumed server
  names the round it resumes after and the node takes its clients' state of that round.
  The prepared model and data are cached per process (the agent's, when there is one).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from flwr.app import ConfigRecord, Context, RecordDict
from flwr.app import Message as FlowerMessage

from fedgpt.errors import ConfigError
from fedgpt.messages import Failure, Message, Reply
from fedgpt.runtime.flower.codec import decode_batch, encode_batch
from fedgpt.runtime.flower.settings import config_from_toml

log = logging.getLogger(__name__)

HELLO = "fedgpt/hello"
SETUP = "fedgpt/setup"
SESSION = "fedgpt.session"  # context.state ConfigRecord: config TOML, setup JSON
CLIENT_STATE = "fedgpt.client_state"  # context.state ConfigRecord: bytes per kind
REDONE = "fedgpt.redone_state"  # the state after a round the resumed server redoes


def model_fingerprint(bundle, fm) -> str:
    """SHA-256 over the vocabulary and the trainable parameters' names and shapes: equal
    on two machines only if they train the same model."""
    h = hashlib.sha256()
    vocab = bundle.tokenizer.get_vocab() if bundle.tokenizer is not None else {}
    h.update(json.dumps(sorted(vocab.items())).encode())
    h.update(json.dumps([list(fm.spec.names), [list(s) for s in fm.spec.shapes]]).encode())
    return h.hexdigest()


def node_client_ids(node_config) -> list[str]:
    """The ``client-id`` node-config value as a list (comma-separated; empty = none)."""
    raw = str(node_config.get("client-id", "") or "")
    return [c.strip() for c in raw.split(",") if c.strip()]


@dataclass
class Local:
    """This node's prepared model and its own clients' data."""

    prep: object  # fedgpt.experiment.Prepared holding only this node's clients
    fingerprint: str


_CACHE: dict[tuple, Local] = {}
CACHED = 2  # prepared runs kept (the oldest goes first)


def prepare_local(cfg, node_config) -> Local:
    """Build the model and tokenise this node's clients (cached per process).

    With ``data-path`` the node reads its own folder and the model comes from the shared
    checkpoint (``model-path`` or ``model.path``). Without it, the node serves Shakespeare
    roles: it builds everything exactly as the server does (``prepare``) and keeps its
    ``client-id`` roles.
    """
    from fedgpt.config import config_hash

    data_path = str(node_config.get("data-path", "") or "")
    model_path = str(node_config.get("model-path", "") or "")
    wanted = node_client_ids(node_config)
    key = (config_hash(cfg), data_path, model_path, tuple(wanted))
    if key in _CACHE:
        return _CACHE[key]

    from fedgpt.build import Prepared, prepare, prepare_with, run_model

    if model_path:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": model_path})})
    if data_path:
        from fedgpt.data import load_client_dir

        if not cfg.model.path:
            raise ConfigError(
                "node-config data-path needs a shared checkpoint: set model.path in the run "
                "configuration (or model-path in this node's --node-config)"
            )
        clients = load_client_dir(data_path, train_fraction=cfg.data.train_fraction)
        if wanted:
            have = {c.client_id for c in clients}
            missing = [c for c in wanted if c not in have]
            if missing:
                raise ConfigError(f"node-config client-id {missing} not found in '{data_path}'")
            clients = [c for c in clients if c.client_id in wanted]
        prep = prepare_with(cfg, clients, run_model(cfg))
    else:
        if cfg.data.source != "shakespeare":
            raise ConfigError(
                'the run uses data.source = "dir": give this node its folder with '
                "--node-config \"data-path='...'\""
            )
        if not wanted:
            raise ConfigError(
                "this node names no clients: start it with --node-config \"client-id='...'\" "
                "(Shakespeare role ids) or \"data-path='...'\""
            )
        full = prepare(cfg)
        unknown = [c for c in wanted if c not in full.data]
        if unknown:
            raise ConfigError(f"node-config client-id {unknown} are not clients of this run")
        clients = [c for c in full.clients if c.client_id in wanted]
        data = {c.client_id: full.data[c.client_id] for c in clients}
        prep = Prepared(clients, full.bundle, full.fm, data, full.init, full.public)
    local = Local(prep, model_fingerprint(prep.bundle, prep.fm))
    while len(_CACHE) >= CACHED:  # a long-lived agent serves run after run
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = local
    return local


def node_folder(node_config, key: str, configured: str, what: str) -> str:
    """The folder a node reads its secrets from: node-config ``key``, else the run's
    setting; a one-line error when neither names one."""
    folder = str(node_config.get(key, "") or configured)
    if not folder:
        option = "ckks_keys" if key == "ckks-keys" else key.replace("-", "_")
        raise ConfigError(
            f"over Flower every node needs {what}: set privacy.{option} or node-config {key}"
        )
    return folder


def fedgpt_client(cfg, local: Local, setup: dict, node_config):
    """FedGPT's ``ClientApp`` for this node's clients, wired as ``run_experiment`` wires
    it (attack simulation, device tiers, CKKS secret context)."""
    from fedgpt.build import build_client_app, device_tiers, receipts_root

    prep, secret, identities = local.prep, None, None
    all_ids = list(setup.get("clients", []))
    kind = cfg.privacy.secure_aggregation
    if kind == "ckks":
        from pathlib import Path

        from fedgpt.privacy.ckks import read_context

        keys = node_folder(node_config, "ckks-keys", cfg.privacy.ckks_keys, "the secret context")
        secret = read_context(Path(keys) / "secret_context.bin", "CKKS secret context")
    if kind in ("secagg", "ckks"):
        from fedgpt.privacy.secagg.identity import Identities

        what = "the signing keys of the node's clients (`fedgpt keys secagg`)"
        folder = node_folder(node_config, "secagg-identities", cfg.privacy.secagg_identities, what)
        identities = Identities.read(folder, list(prep.data))
    tiers = device_tiers(cfg, prep, all_ids) if setup.get("tiers") else None
    receipts = receipts_root(cfg, str(node_config.get("receipts-dir", "") or ""))
    return build_client_app(
        cfg, prep, all_ids, float(setup.get("z", 0.0)), tiers, secret, identities, receipts
    )


def _session(context: Context) -> tuple[object, dict, str]:
    rec = context.state.config_records.get(SESSION)
    if rec is None or "config" not in rec:
        raise RuntimeError("no FedGPT session on this node: the run sent no hello message")
    setup = json.loads(str(rec.get("setup", "{}")))
    return config_from_toml(str(rec["config"])), setup, str(rec.get("run_id", ""))


def node_state(cfg, local: Local, node_config, run_id: str):
    """This node's own record of its clients' state for run ``run_id`` (node_state)."""
    from fedgpt.federation.ledger_keys import fedgpt_home
    from fedgpt.runtime.flower.node_state import NodeState

    root = str(node_config.get("state-dir", "") or fedgpt_home() / "nodes")
    ids = [c.client_id for c in local.prep.clients]
    return NodeState(root, run_id, ids, keep=cfg.federation.checkpoint_keep + 2)


def _hello(msg: Message, context: Context) -> Message:
    """Keep the run's configuration; name this node's clients and its model; take up the
    clients' state where the run's last checkpoint left it (a resumed server says which
    round), from this node's own disk."""
    text = str(msg.config["config"])
    cfg = config_from_toml(text)
    local = prepare_local(cfg, context.node_config)
    run_id = str(msg.config.get("run_id", ""))
    context.state[SESSION] = ConfigRecord({"config": text, "setup": "{}", "run_id": run_id})
    saved, redone = None, []
    for key in [k for k in context.state.config_records if k.startswith(REDONE + ".")]:
        del context.state[key]  # a second hello: the charge comes from disk again
    if run_id:
        rnd = int(msg.config.get("round", 0))
        store = node_state(cfg, local, context.node_config, run_id)
        saved = store.load(rnd) if rnd else None
        redone = [] if cfg.privacy.reproducible_noise else store.after(rnd)
    context.state[CLIENT_STATE] = ConfigRecord(saved or {})
    for i, later in enumerate(redone or []):  # each charged once, by the first batch
        context.state[f"{REDONE}.{i}"] = ConfigRecord(later)
    return Message(
        "fedgpt/hello/result",
        {
            "clients": [c.client_id for c in local.prep.clients],
            "fingerprint": local.fingerprint,
            "numel": int(local.prep.fm.flat.numel()),
        },
    )


def charge_redone(client, context: Context) -> None:
    """Charge the clients with the releases of every snapshot of a round the resumed
    server redoes (``REDONE.i`` records, from the hello), then forget those records: the
    charge now lives in the clients' state."""
    keys = sorted((k for k in context.state.config_records if k.startswith(REDONE + ".")),
                  key=lambda k: int(k.rsplit(".", 1)[1]))  # fmt: skip
    for key in keys:
        client.charge_unseen({k: bytes(v) for k, v in context.state.config_records[key].items()})
        del context.state[key]


def _setup(msg: Message, context: Context) -> Message:
    rec = context.state.config_records[SESSION]
    context.state[SESSION] = ConfigRecord(
        {"config": rec["config"], "setup": json.dumps(msg.config), "run_id": rec.get("run_id", "")}
    )
    return Message("fedgpt/setup/result", {})


def handle(message: FlowerMessage, context: Context) -> FlowerMessage:
    """Flower's handler: the reply to ``message`` (:func:`handle_content`)."""
    return FlowerMessage(handle_content(message.content, context), reply_to=message)


def handle_content(content, context) -> RecordDict:
    """Decode the batch, run each FedGPT message, save the client state, encode replies
    (``context``: anything with Flower's ``state`` and ``node_config``)."""
    items = decode_batch(content, shared=True)
    out: list[tuple[str, Reply]] = []
    client = store = None
    refused = ""  # the run setup failed: the batch's other messages are refused with it
    for cid, msg in items:
        try:
            if refused:
                reply: Reply = Failure(refused)
            elif msg.type == HELLO:
                reply = _hello(msg, context)
            elif msg.type == SETUP:
                reply = _setup(msg, context)
            else:
                if client is None:
                    client, store = _client(context)
                if cid not in client.data:
                    reply = Failure(f"this node does not serve client {cid}")
                else:
                    reply = client(cid, msg)
        except Exception as exc:  # a failing client must not take the others down
            log.warning("client %s failed on %s: %r", cid, msg.type, exc)
            reply = Failure(f"client raised {type(exc).__name__}: {exc}")
            if msg.type == SETUP:
                refused = f"the node could not take the run setup: {exc}"
        out.append((cid, reply))
    if client is not None:
        state = client.state_dict()
        context.state[CLIENT_STATE] = ConfigRecord(state)
        rounds = [m.config.get("round") for _, m in items]
        rnd = max((r for r in rounds if isinstance(r, int)), default=None)
        if store is not None and rnd:  # on this node's disk too: it outlives the Flower run
            store.save(rnd, state)
    return encode_batch(out)


def _client(context):
    """FedGPT's client for this node, its state restored; and the node's disk store."""
    cfg, setup, run_id = _session(context)
    local = prepare_local(cfg, context.node_config)
    client = fedgpt_client(cfg, local, setup, context.node_config)
    store = node_state(cfg, local, context.node_config, run_id) if run_id else None
    saved = context.state.config_records.get(CLIENT_STATE)
    client.load_state_dict({k: bytes(v) for k, v in (saved or {}).items()})
    charge_redone(client, context)
    return client, store
