"""A whole federated fine-tuning run as a library call: data → model → rounds → baselines
→ run folder (config, metrics, checkpoints, model, summary, report).

``run_experiment`` is what ``fedgpt run`` calls; a library user can call it too, or use
the pieces (``prepare`` then ``FederatedServer``) directly.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fedgpt.baselines import sample_local_clients, train_centralized, train_local_only
from fedgpt.build import (  # noqa: F401  (re-exported: the builder's entry points)
    Prepared,
    build_client_app,
    build_server,
    build_task,
    ckks_keys,
    device_tiers,
    fedmd_client,
    load_clients,
    make_privacy,
    prepare,
    prepare_with,
    receipts_root,
    secagg_identities,
)
from fedgpt.callbacks import Hooks
from fedgpt.client.attack import Poison
from fedgpt.config import RunConfig, check_paths
from fedgpt.errors import ConfigError
from fedgpt.federation.loop import FederatedServer
from fedgpt.privacy.local_dp import LocalDPRelease
from fedgpt.runner import (  # noqa: F401  (re-exported)
    FEDERATED,
    Runner,
    check_new_run_dir,
    new_run_dir,
    resume_config,
    run_round_with_retries,
)
from fedgpt.runtime import InProcessRuntime
from fedgpt.runtime.faults import FaultInjector


def run_experiment(
    cfg: RunConfig, run_dir: Path, resume: bool = False, hooks: Hooks | None = None
) -> dict:
    """Run (or continue) the federation described by ``cfg`` in ``run_dir``."""
    hooks = hooks or Hooks()
    t_start = time.perf_counter()
    if not resume:  # before a minute of preparation: a run folder is never overwritten
        check_paths(cfg)
        check_new_run_dir(run_dir)
    hooks.stage("preparing data and model", None)
    prep = prepare(cfg)  # every input is checked before anything is written
    return run_prepared(cfg, prep, run_dir, resume, hooks, t_start)


def in_process_runtime(cfg: RunConfig, app, faults=None) -> InProcessRuntime:
    """The in-process runtime of ``cfg``: serial, or ``runtime.workers`` processes."""
    timeout = cfg.runtime.round_timeout or None
    if cfg.runtime.workers > 1:
        from fedgpt.config.schema import WORKERS_ON_CUDA
        from fedgpt.models.device import resolve_device
        from fedgpt.runtime.workers import WorkerRuntime

        if resolve_device(cfg.runtime.device).type == "cuda":  # "auto" on a GPU machine
            raise ConfigError(WORKERS_ON_CUDA)

        return WorkerRuntime(
            app, cfg.runtime.workers, cfg.runtime.threads, faults=faults, timeout=timeout
        )
    return InProcessRuntime(app, faults=faults, timeout=timeout)


def run_prepared(
    cfg: RunConfig,
    prep: Prepared,
    run_dir: Path,
    resume: bool = False,
    hooks: Hooks | None = None,
    t_start: float | None = None,
) -> dict:
    """:func:`run_experiment` for data and a model already prepared (:class:`Prepared`:
    e.g. your own model and in-memory data, :func:`fedgpt.api.federate`)."""
    hooks = hooks or Hooks()
    t_start = time.perf_counter() if t_start is None else t_start
    ids = list(prep.data)
    keys = ckks_keys(cfg)
    faults = FaultInjector.from_config(cfg, ids)
    privacy, tiers = make_privacy(cfg, len(ids)), device_tiers(cfg, prep, ids)
    identities = secagg_identities(cfg, ids)
    app = build_client_app(
        cfg, prep, ids, privacy.z, tiers, keys[0] if keys else None, identities,
        receipts_dir=receipts_root(cfg),
    )  # fmt: skip
    runtime = in_process_runtime(cfg, app, faults)
    server, privacy, tiers = build_server(
        cfg, prep, runtime, ids, keys[1] if keys else None, privacy=privacy, tiers=tiers,
        registry=identities.public() if identities is not None else None,
    )  # fmt: skip
    hooks.log(f"run folder: {run_dir}")
    trainable, total = prep.bundle.counts()
    hooks.log(
        f"{len(ids)} clients, model {prep.bundle.name}: "
        f"{trainable:,} trainable of {total:,} parameters, {cfg.model.dtype} on "
        f"{prep.fm.flat.device}"
    )
    if privacy.active:
        hooks.log(f"privacy: {cfg.privacy.mode}, noise multiplier {privacy.z:.4g}")
    if (poison := app.algorithm.step(Poison)) is not None:
        hooks.log(f"attack simulation: {len(poison.malicious)} clients {cfg.attack.kind}")
    if tiers:
        counts: dict[str, int] = {}
        for t, _, _ in tiers.values():
            counts[t] = counts.get(t, 0) + 1
        hooks.log("device tiers: " + ", ".join(f"{t} x{n}" for t, n in sorted(counts.items())))
    baselines = None
    if cfg.baselines.enabled:

        def baselines(rows: list[dict], last_eval: dict) -> dict:
            return run_baselines(cfg, prep, server, rows, last_eval, hooks)

    def restore_clients(ck) -> None:  # in-process: everything the clients carry
        if ck.clients:
            app.load_state_dict(ck.clients)
        elif (ldp := app.algorithm.step(LocalDPRelease)) is not None:  # older checkpoints
            ldp.releases = dict(ck.meta.get("privacy", {}).get("participation", {}))

    runner = Runner(
        cfg, prep, server, privacy, run_dir, hooks, resume=resume,
        on_attempt=faults.set_attempt if faults is not None else None,
        restore_clients=restore_clients, client_state=app.state_dict, baselines=baselines,
        t_start=t_start,
    )  # fmt: skip
    try:
        return runner.run()
    finally:
        if hasattr(runtime, "close"):  # runtime.workers: the worker processes end with the run
            runtime.close()


def run_baselines(
    cfg: RunConfig,
    prep: Prepared,
    server: FederatedServer,
    rows: list[dict],
    fed_eval: dict,
    hooks: Hooks,
) -> dict:
    steps = sum(int(r.get("client_steps", 0)) for r in rows)
    hooks.stage(f"baseline: centralized ({steps} steps)", steps)
    last = [0]

    def adv(done: int) -> None:
        hooks.advance(done - last[0])
        last[0] = done

    task = build_task(cfg)
    w, info = train_centralized(prep.fm, prep.init, prep.data, cfg, steps, adv, task)
    hooks.stage("baseline: centralized evaluation", len(prep.data))
    ev = server.evaluate(w, 0)
    central = {**info, **{k: ev[k] for k in FEDERATED if k in ev}}
    ids, sampled = sample_local_clients(list(prep.data), cfg.baselines.local_clients, cfg.seed)
    hooks.stage(f"baseline: local-only ({len(ids)} clients)", len(ids))
    local = train_local_only(
        prep.fm, prep.init, prep.data, cfg, ids, lambda cid: hooks.advance(), task
    )
    local["sampled"] = sampled
    per = fed_eval.get("per_client", {})
    same = [per[c]["accuracy"] for c in ids if c in per]
    local["federated_accuracy_same_clients"] = float(np.mean(same)) if same else None
    return {"centralized": central, "local_only": local}
