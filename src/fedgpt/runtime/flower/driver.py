"""The server side of a FedGPT run over Flower, given a runtime and the client ids.

It runs the same :class:`~fedgpt.federation.loop.FederatedServer` rounds as
:func:`fedgpt.experiment.run_experiment` and writes the same run folder (``config.toml``,
``metrics.jsonl``, ``checkpoints/``, ``model/``, ``summary.json``, report), with three
differences that follow from the server not holding the clients' data:

* no baselines (centralized and local-only training need every client's text);
* no ``--resume`` (start a new run; the checkpoints and the ledger are written as usual);
* ``dataset`` in the summary covers only what the server knows.

Features whose wiring also lives on the clients outside FedGPT's ``ClientApp`` messages
(learned ``attention`` aggregation, ``federation.distill``) and the in-process fault
injection (``runtime.fail_*``, ``runtime.straggle_*``) are refused with a one-line error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedgpt.errors import ConfigError

Log = Callable[[str], None]


def check_supported(cfg) -> None:
    """Refuse, in one line, settings the Flower runtime does not carry yet."""
    f = cfg.federation
    if getattr(f, "distill", "none") != "none":
        raise ConfigError(
            f'federation.distill = "{f.distill}" is not supported over Flower yet; use "none"'
        )
    if f.aggregator == "attention":
        raise ConfigError('federation.aggregator = "attention" is not supported over Flower yet')
    r = cfg.runtime
    if r.fail_clients or r.fail_fraction or r.straggle_clients or r.straggle_fraction:
        raise ConfigError(
            "runtime fault injection (fail_*, straggle_*) simulates the in-process runtime; "
            "over Flower real nodes fail"
        )
    if f.max_update_norm and cfg.privacy.secure_aggregation != "none":
        raise ConfigError(
            "federation.max_update_norm needs to see each update, which "
            f'secure_aggregation = "{cfg.privacy.secure_aggregation}" hides'
        )


def server_model(cfg):
    """The server's model (and, for Shakespeare, the clients' texts as the server can
    rebuild them), as a :class:`~fedgpt.experiment.Prepared`.

    Shakespeare: ``prepare(cfg)`` on the packaged plays, so the character vocabulary is
    the one every node builds from the same configuration. ``data.source = "dir"``: the
    server has no client text, so the model must come from a shared checkpoint
    (``model.path``) that every node holds too.
    """
    from fedgpt.experiment import Prepared, prepare

    if cfg.data.source == "shakespeare":
        return prepare(cfg)
    if not cfg.model.path:
        raise ConfigError(
            'over Flower, data.source = "dir" needs model.path: a checkpoint every machine '
            "holds (the vocabulary cannot be built from text the server never sees)"
        )
    from fedgpt.models.build import build_model
    from fedgpt.models.params import bind_flat

    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    bundle = build_model(cfg.model, [], cfg.seed)
    fm = bind_flat(bundle.model)
    public = None
    if cfg.data.public_plays:
        from fedgpt.data import shakespeare_clients

        roles = shakespeare_clients(min_chars=1, plays=cfg.data.public_plays)
        text = "\n".join(c.train + "\n" + c.test for c in roles)
        public = torch.from_numpy(bundle.codec.encode(text))
    return Prepared([], bundle, fm, {}, fm.flat.clone(), public)


def build_server(cfg, prep, runtime, ids: list[str], log: Log):
    """The FederatedServer over ``runtime``, wired as ``run_experiment`` wires it on the
    server side. Returns (server, privacy, tiers)."""
    from fedgpt.experiment import device_tiers, make_privacy
    from fedgpt.federation.loop import FederatedServer

    privacy = make_privacy(cfg, len(ids))
    tiers = device_tiers(cfg, prep, ids)
    server = FederatedServer(cfg, runtime, ids, privacy)
    if cfg.federation.aggregator == "fedatt":
        from fedgpt.aggregation.fedatt import layer_ids

        server.layer_ids = layer_ids(prep.fm.spec)
    if cfg.federation.hybrid_lambda > 0:
        from fedgpt.federation.hybrid import public_step

        server.public_step = public_step(prep.fm, prep.public, cfg)
    if tiers:
        server.tier_masks = {t: m for t, _, m in tiers.values()}
    if cfg.privacy.secure_aggregation == "ckks":
        from fedgpt.privacy.ckks import CkksServer, read_context

        if not cfg.privacy.ckks_keys:
            raise ConfigError(
                'privacy.secure_aggregation = "ckks" over Flower needs privacy.ckks_keys: the '
                "server reads public_context.bin there, each node its secret_context.bin"
            )
        path = Path(cfg.privacy.ckks_keys) / "public_context.bin"
        server.ckks = CkksServer(read_context(path, "privacy.ckks_keys public context"))
    if privacy.active:
        log(f"privacy: {cfg.privacy.mode}, noise multiplier {privacy.z:.4g}")
    return server, privacy, tiers


class _Log:
    """The ``Hooks`` that ``run_round_with_retries`` and ``open_ledger`` talk to."""

    def __init__(self, log: Log):
        self.log = log


def run_rounds(cfg, prep, server, privacy, run_dir: Path, log: Log, extra: dict) -> dict:
    """Rounds (with the ``runtime.min_replies`` quorum and retries), metrics, ledger,
    checkpoints, model, summary and report in ``run_dir``, as ``run_experiment`` writes
    them; returns the summary (``extra`` is merged into it, e.g. the runtime's nodes)."""
    from fedgpt.config import config_hash, to_toml
    from fedgpt.data import dataset_stats
    from fedgpt.experiment import open_ledger, run_round_with_retries
    from fedgpt.federation.checkpoint import Checkpoint, save_checkpoint
    from fedgpt.federation.ledger import utc_now
    from fedgpt.models.build import save_model

    t_start = time.perf_counter()
    hooks = _Log(log)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("")
    chash = config_hash(cfg)
    state = server.init_state(prep.init)
    ledger = open_ledger(cfg, run_dir, chash, state, False, hooks)
    rows: list[dict] = []
    last_eval, stopped = None, None
    for _ in range(cfg.federation.rounds):
        if privacy.would_exceed():
            stopped = (
                f"privacy budget: one more round would exceed epsilon "
                f"{cfg.privacy.target_epsilon} (spent {privacy.epsilon():.4f})"
            )
            log(f"stopping after round {state.round}: {stopped}")
            break
        started = utc_now()
        new_state, result, attempts = run_round_with_retries(server, state, cfg, None, hooks)
        if result.below_quorum is not None:
            stopped = (
                f"quorum not reached in round {result.round} after {attempts} attempt(s) "
                f"({result.below_quorum}); the global model is unchanged"
            )
            log(f"stopping after round {state.round}: {stopped}")
            break
        state = new_state
        row = result.row()
        row["client_steps"] = int(sum(m.get("steps", 0) for m in result.client_metrics.values()))
        if attempts > 1:
            row["retries"] = attempts - 1
        rows.append(row)
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if result.eval is not None:
            last_eval = result.eval
        if ledger is not None:  # before the checkpoint, as in run_experiment
            ledger.append_round(
                state.round,
                result.participants,
                result.dropped,
                result.update_hashes,
                state.weights,
                state.opt_state,
                row.get("epsilon"),
                started,
                utc_now(),
                attempts - 1,
            )
        meta = {
            "seed": cfg.seed,
            "config_hash": chash,
            "clients": len(server.client_ids),
            "privacy": privacy.state(),
        }
        save_checkpoint(
            run_dir / "checkpoints",
            Checkpoint(state.round, state.weights, state.opt_state, meta),
            keep=cfg.federation.checkpoint_keep,
        )
        log(
            f"round {row['round']}: participants {len(row['participants'])}, "
            f"dropped {len(row['dropped'])}, train_loss {row['train_loss']}, "
            f"test_loss {row['test_loss']}, {row['seconds']:.2f} s"
        )
    if last_eval is None or not rows or rows[-1].get("test_loss") is None:
        last_eval = server.evaluate(state.weights, state.round)
    prep.fm.load(state.weights)
    save_model(prep.bundle, run_dir / "model")
    if ledger is not None:
        ledger.append_model(run_dir / "model", state.round, state.weights)
    trainable, total = prep.bundle.counts()
    ids = set(server.client_ids)
    known = [c for c in prep.clients if c.client_id in ids]
    summary = {
        "run_name": run_dir.name,
        "rounds": state.round,
        "config_hash": chash,
        "model": {
            "name": prep.bundle.name,
            "trainable_params": trainable,
            "total_params": total,
            "lora": prep.bundle.lora,
        },
        "dataset": dataset_stats(known) if known else {"num_clients": len(ids)},
        "federated": {k: last_eval[k] for k in ("test_loss", "test_accuracy", "perplexity")},
        "federated_per_client": last_eval["per_client"],
        "baselines": None,
        "stopped": stopped,
        "privacy": None
        if not privacy.active
        else {
            "mode": cfg.privacy.mode,
            "epsilon": privacy.epsilon(),
            "delta": cfg.privacy.delta,
            "noise_multiplier": privacy.z,
            "accountant": cfg.privacy.accountant,
        },
        **extra,
    }
    summary["federated_seconds"] = sum(r["seconds"] for r in rows)
    summary["seconds"] = time.perf_counter() - t_start
    summary["config_path"] = "config.toml"
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    from fedgpt.report import write_report

    write_report(run_dir)
    return summary
