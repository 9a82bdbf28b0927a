"""The Flower ServerApp: a FedGPT run driven from a SuperLink.

``main`` reads the run configuration (``config-path`` + ``overrides``, see
:mod:`fedgpt.runtime.flower.settings`), builds the server's model, waits for the
SuperNodes, asks each which clients it serves (``fedgpt/hello``, which also hands the
node the run's configuration and checks that its model is the server's), then runs the
FederatedServer rounds over :class:`~fedgpt.runtime.flower.runtime.FlowerRuntime` and
writes the run folder on the server machine (``out_dir/name``). Progress lines go to the
run's log (``flwr log RUN_ID``); a failure makes the run's status ``finished:failed``
(``flwr ls --format json``).
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedgpt.errors import ConfigError, RunError
from fedgpt.messages import Failure, Message
from fedgpt.runtime.flower.node import HELLO, SETUP
from fedgpt.runtime.flower.runtime import FlowerRuntime
from fedgpt.runtime.flower.settings import FlowerSettings

app = ServerApp()
_T0 = time.monotonic()


def say(msg: str) -> None:
    """One progress line into the run's log."""
    print(f"[fedgpt] {time.monotonic() - _T0:7.1f}s {msg}", flush=True)


def wait_for_nodes(grid: Grid, n: int, wait: float) -> list[int]:
    """The connected SuperNodes' ids, once at least ``n`` are there (or fail after
    ``wait`` seconds)."""
    end = time.monotonic() + wait
    while True:
        nodes = sorted(int(x) for x in grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.monotonic() >= end:
            raise RunError(f"only {len(nodes)} SuperNode(s) connected after {wait:g} s, need {n}")
        time.sleep(0.5)


def handshake(
    grid: Grid,
    nodes: list[int],
    cfg,
    fingerprint: str,
    numel: int,
    timeout: float,
    session: dict | None = None,
):
    """Send each node the run's configuration (and ``session``: the run folder's identity
    and the round a resumed run continues after); return ``{client id: node id}``.

    A node whose model differs from the server's (another vocabulary or architecture)
    stops the run with a one-line error. A client id belongs to the first node (in node-id
    order) that claims it; a second claimant is refused that client, logged, and the run
    goes on. A node that fails to answer is left out (logged).
    """
    from fedgpt.config import to_toml

    key = {f"@node:{n}": n for n in nodes}
    rt = FlowerRuntime(grid, key, timeout=timeout)
    text = to_toml(cfg)
    hello = {"config": text, **(session or {})}
    replies = rt.send_and_receive({k: Message(HELLO, hello) for k in key})
    node_of: dict[str, int] = {}
    for k in sorted(replies, key=lambda k: key[k]):
        reply, node = replies[k], key[k]
        if isinstance(reply, Failure):
            say(f"node {node} left out: {reply.reason}")
            continue
        c = reply.config
        if c.get("fingerprint") != fingerprint or c.get("numel") != numel:
            raise ConfigError(
                f"node {node}'s model differs from the server's ({c.get('numel')} vs {numel} "
                "parameters or another vocabulary): every machine needs the same model.path "
                "checkpoint and configuration"
            )
        for cid in c.get("clients", []):
            if cid in node_of:
                say(f"node {node} refused client {cid}: node {node_of[cid]} claimed it first")
                continue
            node_of[cid] = node
    if not node_of:
        raise RunError("no SuperNode serves any client")
    return node_of


def setup_refused(key: str, reply) -> None:
    """A node that could not take the run setup: its clients fail every message of the run
    (the node refuses them), so the run goes on without them; say so once."""
    if isinstance(reply, Failure):
        say(f"{key[1:]} did not take the run setup: {reply.reason}")


def order_clients(prep, node_of: dict[str, int]) -> list[str]:
    """The run's client ids in the server's order (Shakespeare: the dataset's order, as
    in-process; user data: sorted)."""
    if not prep.clients:
        return sorted(node_of)
    known = [c.client_id for c in prep.clients]
    unknown = sorted(set(node_of) - set(known))
    if unknown:
        raise ConfigError(f"nodes serve clients {unknown[:5]} that are not in this run's data")
    missing = [c for c in known if c not in node_of]
    if missing:
        say(f"{len(missing)} of {len(known)} clients are served by no node: {missing[:5]}")
    return [c for c in known if c in node_of]


def run_session(run_dir: Path, resume: bool) -> dict:
    """What the nodes learn in the hello: the run folder's identity (kept in its
    ``run.json``, new for a new run) and, on resume, the round of the checkpoint the run
    continues after, so each node takes up its clients' state of that round."""
    import os

    from fedgpt.federation.checkpoint import usable_checkpoint
    from fedgpt.runner import read_run_id

    run_id = (read_run_id(run_dir) if resume else None) or os.urandom(16).hex()
    ck = usable_checkpoint(run_dir / "checkpoints")[0] if resume else None
    return {"run_id": run_id, "round": ck.round if ck is not None else 0}


def run(grid: Grid, settings: FlowerSettings) -> dict:
    """A whole FedGPT run over ``grid`` (what ``main`` does); returns the summary."""
    from fedgpt.build import client_setup
    from fedgpt.runner import new_run_dir
    from fedgpt.runtime.faults import FaultInjector, FaultyRuntime
    from fedgpt.runtime.flower.driver import build_server, run_rounds, server_model
    from fedgpt.runtime.flower.node import model_fingerprint

    cfg = settings.fedgpt_config()
    prep = server_model(cfg)
    fingerprint = model_fingerprint(prep.bundle, prep.fm)
    nodes = wait_for_nodes(grid, settings.min_nodes, settings.node_wait)
    say(f"{len(nodes)} SuperNode(s) connected")
    run_dir = Path(settings.resume) if settings.resume else new_run_dir(cfg)
    session = run_session(run_dir, bool(settings.resume))
    numel = int(prep.fm.flat.numel())
    node_of = handshake(grid, nodes, cfg, fingerprint, numel, settings.timeout, session)
    ids = order_clients(prep, node_of)
    timeout = cfg.runtime.round_timeout or settings.timeout  # FedGPT's deadline wins if set
    runtime = flower = FlowerRuntime(grid, node_of, timeout=timeout)
    faults = FaultInjector.from_config(cfg, ids)
    if faults is not None:  # simulated faults, applied at the server's end of the wire
        runtime = FaultyRuntime(runtime, faults, cfg.runtime.round_timeout or None)
    server, privacy, tiers = build_server(cfg, prep, runtime, ids, say)
    setup = client_setup(cfg, ids, privacy, tiers)
    if setup is not None:  # travels at the head of each node's first batch
        per_node = {f"@node:{n}": Message(SETUP, setup) for n in sorted(set(node_of.values()))}
        flower.carry(per_node, on_reply=setup_refused)
    trainable, total = prep.bundle.counts()
    say(f"run folder: {run_dir}")
    say(
        f"{len(ids)} clients on {len(set(node_of.values()))} nodes, model {prep.bundle.name}: "
        f"{trainable:,} trainable of {total:,} parameters"
    )
    extra = {
        "runtime": {
            "kind": "flower",
            "nodes": {str(n): sorted(c for c in ids if node_of[c] == n) for n in nodes},
        }
    }
    attempt = faults.set_attempt if faults is not None else None
    summary = run_rounds(
        cfg, prep, server, privacy, run_dir, say, extra, bool(settings.resume), attempt,
        run_id=session["run_id"],
    )  # fmt: skip
    flower.flush()  # the last round's receipts
    say(f"{flower.round_trips + 1} exchanges with the nodes, the hello included")
    say(f"done: {summary['rounds']} rounds, test loss {summary['federated']['test_loss']}")
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point (``[tool.flwr.app.components] serverapp``)."""
    run(grid, FlowerSettings.from_run_config(context.run_config))
