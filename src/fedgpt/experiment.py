"""A whole federated fine-tuning run as a library call: data → model → rounds → baselines
→ run folder (config, metrics, checkpoints, model, summary, report).

``run_experiment`` is what ``fedgpt run`` calls; a library user can call it too, or use
the pieces (``prepare`` then ``FederatedServer``) directly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedgpt.baselines import sample_local_clients, train_centralized, train_local_only
from fedgpt.client.app import ClientApp, ClientData, client_seed
from fedgpt.config import RunConfig, config_hash, load_config, to_toml
from fedgpt.data import ClientText, dataset_stats
from fedgpt.errors import ConfigError, RunError
from fedgpt.federation.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fedgpt.federation.ledger import Ledger, utc_now
from fedgpt.federation.loop import FederatedServer, RoundResult, ServerState
from fedgpt.federation.sampling import clients_per_round
from fedgpt.models.build import ModelBundle, build_model, save_model
from fedgpt.models.params import FlatModel, bind_flat
from fedgpt.privacy.engine import ServerPrivacy
from fedgpt.runtime import InProcessRuntime
from fedgpt.runtime.faults import FaultInjector


class Hooks:
    """Progress callbacks; the CLI draws progress bars with them. All optional."""

    def rounds(self, total: int, done: int) -> None: ...
    def stage(self, name: str, total: int | None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def round_done(self, row: dict) -> None: ...
    def log(self, msg: str) -> None: ...


def load_clients(cfg: RunConfig) -> list[ClientText]:
    """The clients of the run, as configured (a seeded sample if ``data.max_clients``)."""
    d = cfg.data
    if d.source == "dir":
        from fedgpt.data import load_client_dir

        clients = load_client_dir(d.path, train_fraction=d.train_fraction)
    else:
        from fedgpt.data import shakespeare_clients

        clients = shakespeare_clients(
            min_chars=d.min_chars,
            train_fraction=d.train_fraction,
            plays=d.plays or None,
            exclude_plays=[*d.exclude_plays, *d.public_plays],
        )
    if d.max_clients and len(clients) > d.max_clients:
        rng = np.random.default_rng([cfg.seed, 0xDA7A])
        keep = np.sort(rng.choice(len(clients), size=d.max_clients, replace=False))
        clients = [clients[i] for i in keep]
    return clients


@dataclass
class Prepared:
    clients: list[ClientText]
    bundle: ModelBundle
    fm: FlatModel
    data: dict[str, ClientData]
    init: torch.Tensor
    public: torch.Tensor | None = None  # server-side public tokens (hybrid aggregation)


def prepare(cfg: RunConfig) -> Prepared:
    """Load the clients, build the model and tokenise every client's text."""
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    clients = load_clients(cfg)
    bundle = build_model(cfg.model, (c.train for c in clients), cfg.seed)
    fm = bind_flat(bundle.model)
    enc = bundle.codec.encode
    data = {
        c.client_id: ClientData(
            c.client_id, torch.from_numpy(enc(c.train)), torch.from_numpy(enc(c.test))
        )
        for c in clients
    }
    public = None
    if cfg.data.public_plays:
        from fedgpt.data import shakespeare_clients

        roles = shakespeare_clients(min_chars=1, plays=cfg.data.public_plays)
        public = torch.from_numpy(enc("\n".join(c.train + "\n" + c.test for c in roles)))
    return Prepared(clients, bundle, fm, data, fm.flat.clone(), public)


def device_tiers(cfg: RunConfig, prep: Prepared, ids: list[str]) -> dict:
    """client -> (tier, trainable per parameter, flat mask) for clients not on "full"."""
    from fedgpt.models.tiers import assign_tiers, choose_tier, tier_mask, tier_params

    d, mc = cfg.devices, prep.bundle.model.config
    n_layer = getattr(mc, "n_layer", None) or getattr(mc, "num_hidden_layers", 1)
    n_embd = getattr(mc, "n_embd", None) or getattr(mc, "hidden_size", 1)
    spec, c = prep.fm.spec, cfg.client
    lora_r = cfg.model.lora.r if prep.bundle.lora else 0
    frozen = prep.bundle.counts()[1] - spec.numel

    def choose(mb: float) -> str:
        return choose_tier(
            spec,
            mb,
            n_layer,
            n_embd,
            prep.bundle.codec.vocab_size,
            c.batch_size,
            c.seq_len,
            lora_r,
            frozen,
        )

    assigned = assign_tiers(d, ids, cfg.seed, choose)
    partial = {cid: t for cid, t in assigned.items() if t != "full"}
    if not partial:
        return {}
    p = cfg.privacy
    if (
        p.mode != "none"
        or p.secure_aggregation != "none"
        or cfg.federation.aggregator not in ("fedavg", "attention")
    ):
        raise ConfigError(
            "device tiers other than 'full' need per-parameter coverage counts, which are "
            "not carried with privacy modes, secure aggregation or robust aggregators yet"
        )
    if cfg.federation.distill == "fedmd":
        raise ConfigError(
            'device tiers do not apply to federation.distill = "fedmd" (clients send logits, '
            "not slices; use federation.fedmd_client_layers for smaller client models)"
        )
    cache = {
        t: (tier_params(spec, t, n_layer, lora_r), tier_mask(spec, t, n_layer, lora_r))
        for t in set(partial.values())
    }
    return {cid: (t, *cache[t]) for cid, t in partial.items()}


def wire_distillation(cfg: RunConfig, prep: Prepared, app: ClientApp, server) -> None:
    """Give the server (and, for FedMD, the clients) what learned attention and
    knowledge distillation need: the public text, the server's model, the clients' own."""
    f = cfg.federation
    server.fm, server.public = prep.fm, prep.public
    server.vocab_size = prep.bundle.codec.vocab_size
    if f.aggregator == "attention":
        from fedgpt.client.batches import sample_windows

        gen = torch.Generator().manual_seed(client_seed(cfg.seed, 0, "__attention_val__"))
        server.attention_val = sample_windows(
            prep.public, f.attention_windows, cfg.client.seq_len, gen
        )
    if f.distill == "feddf":
        from fedgpt.federation.distill import feddf_step

        server.distill_step = feddf_step(prep.fm, prep.public, cfg)
    if f.distill == "fedmd":
        from fedgpt.federation.fedmd import FedMDClient

        fm, init = prep.fm, prep.init
        if f.fedmd_client_layers and f.fedmd_client_layers != cfg.model.n_layer:
            small = cfg.model.model_copy(update={"n_layer": f.fedmd_client_layers})
            fm = bind_flat(build_model(small, (c.train for c in prep.clients), cfg.seed).model)
            init = fm.flat.clone()
        app.fedmd = FedMDClient(fm, init, prep.public, cfg.client)


def make_privacy(cfg: RunConfig, num_clients: int) -> ServerPrivacy:
    """The run's privacy policy (checks the privacy settings before anything runs)."""
    f = cfg.federation
    per_round = clients_per_round(num_clients, f.fraction, f.min_clients)
    if cfg.privacy.secure_aggregation == "secagg" and per_round < 3:
        raise ConfigError(
            f'privacy.secure_aggregation = "secagg" needs at least 3 clients per round, the '
            f"federation samples {per_round} (raise federation.min_clients or fraction)"
        )
    return ServerPrivacy(cfg.privacy, num_clients, per_round, f.rounds)


def ckks_keys(cfg: RunConfig) -> tuple[bytes, bytes] | None:
    """(secret, public) CKKS contexts when ``secure_aggregation = "ckks"``: read from
    ``privacy.ckks_keys`` or made fresh for this run."""
    p = cfg.privacy
    if p.secure_aggregation != "ckks":
        return None
    from fedgpt.privacy.ckks import make_keys, read_context

    if not p.ckks_keys:
        return make_keys()
    d = Path(p.ckks_keys)
    return (
        read_context(d / "secret_context.bin", "privacy.ckks_keys secret context"),
        read_context(d / "public_context.bin", "privacy.ckks_keys public context"),
    )


def new_run_dir(cfg: RunConfig) -> Path:
    """``out_dir/name``, or ``name-2``, ``name-3``... if that already holds a run."""
    base = Path(cfg.out_dir) / cfg.name
    path, i = base, 1
    while path.exists() and any(path.iterdir()):
        i += 1
        path = base.with_name(f"{cfg.name}-{i}")
    return path


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def resume_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise RunError(f"--resume: '{run_dir}' is not a run folder (no config.toml)")
    return load_config(cfg_path, overrides)


def run_experiment(
    cfg: RunConfig, run_dir: Path, resume: bool = False, hooks: Hooks | None = None
) -> dict:
    """Run (or continue) the federation described by ``cfg`` in ``run_dir``."""
    hooks = hooks or Hooks()
    t_start = time.perf_counter()
    hooks.stage("preparing data and model", None)
    prep = prepare(cfg)  # every input is checked before anything is written
    ids = [c.client_id for c in prep.clients]
    privacy = make_privacy(cfg, len(ids))
    keys = ckks_keys(cfg)
    tiers = device_tiers(cfg, prep, ids)
    faults = FaultInjector.from_config(cfg, ids)
    if cfg.federation.max_update_norm and cfg.privacy.secure_aggregation != "none":
        raise ConfigError(
            "federation.max_update_norm needs to see each update, which "
            f'secure_aggregation = "{cfg.privacy.secure_aggregation}" hides'
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))
    hooks.log(f"run folder: {run_dir}")
    trainable, total = prep.bundle.counts()
    hooks.log(
        f"{len(prep.clients)} clients, model {prep.bundle.name}: "
        f"{trainable:,} trainable of {total:,} parameters"
    )
    if privacy.active:
        hooks.log(f"privacy: {cfg.privacy.mode}, noise multiplier {privacy.z:.4g}")
    app = ClientApp(prep.fm, prep.data, cfg.client, cfg.privacy, privacy.z)
    if cfg.attack.fraction > 0:
        from fedgpt.client.attack import malicious_clients

        app.malicious = frozenset(malicious_clients(ids, cfg.attack.fraction, cfg.seed))
        app.attack = cfg.attack
        hooks.log(f"attack simulation: {len(app.malicious)} clients {cfg.attack.kind}")
    runtime = InProcessRuntime(app, faults=faults, timeout=cfg.runtime.round_timeout or None)
    server = FederatedServer(cfg, runtime, ids, privacy)
    if cfg.federation.aggregator == "fedatt":
        from fedgpt.aggregation.fedatt import layer_ids

        server.layer_ids = layer_ids(prep.fm.spec)
    wire_distillation(cfg, prep, app, server)
    if cfg.federation.hybrid_lambda > 0:
        from fedgpt.federation.hybrid import public_step

        server.public_step = public_step(prep.fm, prep.public, cfg)
    if tiers:
        app.tiers = tiers
        server.tier_masks = {t: m for t, _, m in tiers.values()}
        counts: dict[str, int] = {}
        for t, _, _ in tiers.values():
            counts[t] = counts.get(t, 0) + 1
        hooks.log("device tiers: " + ", ".join(f"{t} x{n}" for t, n in sorted(counts.items())))
    if keys is not None:
        from fedgpt.privacy.ckks import CkksClient, CkksServer

        app.ckks = CkksClient(keys[0])  # the clients hold the secret context
        server.ckks = CkksServer(keys[1])  # the server only the public one
    server.on_reply = lambda cid, reply: hooks.advance()
    server.on_eval_start = lambda rnd, n: hooks.stage(f"round {rnd}: evaluating", n)
    ckpt_root = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    state = server.init_state(prep.init)
    rows: list[dict] = []
    if resume:
        latest = latest_checkpoint(ckpt_root)
        if latest is not None:
            ck = load_checkpoint(latest)
            if ck.weights.shape != prep.init.shape:
                raise RunError(f"--resume: checkpoint '{latest}' does not fit this model")
            state = ServerState(ck.round, ck.weights, ck.server_state)
            privacy.load_state(ck.meta.get("privacy", {}))
            app.releases = dict(ck.meta.get("privacy", {}).get("participation", {}))
            hooks.log(f"resuming after round {ck.round} from {latest}")
        rows = [r for r in read_rows(metrics_path) if r["round"] <= state.round]
    chash = config_hash(cfg)
    ledger = open_ledger(cfg, run_dir, chash, state, resume, hooks)
    _write_rows(metrics_path, rows)
    hooks.rounds(cfg.federation.rounds, state.round)
    last_eval: dict | None = None
    stopped = None
    for _ in range(state.round, cfg.federation.rounds):
        if privacy.would_exceed():
            stopped = (
                f"privacy budget: one more round would exceed epsilon "
                f"{cfg.privacy.target_epsilon} (spent {privacy.epsilon():.4f})"
            )
            hooks.log(f"stopping after round {state.round}: {stopped}")
            break
        n_sel = len(server.client_ids)
        server.on_round_start = lambda r, chosen: hooks.stage(
            f"round {r}/{cfg.federation.rounds}: training", len(chosen)
        )
        started = utc_now()
        new_state, result, attempts = run_round_with_retries(server, state, cfg, faults, hooks)
        if result.below_quorum is not None:
            stopped = (
                f"quorum not reached in round {result.round} after {attempts} attempt(s) "
                f"({result.below_quorum}); the global model is unchanged"
            )
            hooks.log(f"stopping after round {state.round}: {stopped}")
            break
        state = new_state
        row = result.row()
        row["client_steps"] = int(sum(m["steps"] for m in result.client_metrics.values()))
        if attempts > 1:
            row["retries"] = attempts - 1
        rows.append(row)
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if result.eval is not None:
            last_eval = result.eval
        if ledger is not None:  # before the checkpoint: a resume cuts entries past it
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
        save_checkpoint(
            ckpt_root,
            Checkpoint(
                state.round,
                state.weights,
                state.opt_state,
                {
                    "seed": cfg.seed,
                    "config_hash": chash,
                    "clients": n_sel,
                    "privacy": privacy.state(),
                },
            ),
            keep=cfg.federation.checkpoint_keep,
        )
        hooks.round_done(row)

    if last_eval is None or rows[-1].get("test_loss") is None:
        last_eval = server.evaluate(state.weights, state.round)
    prep.fm.load(state.weights)
    save_model(prep.bundle, run_dir / "model")
    if ledger is not None:
        ledger.append_model(run_dir / "model", state.round, state.weights)
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
        "dataset": dataset_stats(prep.clients),
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
    }
    if cfg.baselines.enabled:
        summary["baselines"] = run_baselines(cfg, prep, server, rows, last_eval, hooks)
        prep.fm.load(state.weights)
    summary["federated_seconds"] = sum(r["seconds"] for r in rows)
    summary["seconds"] = time.perf_counter() - t_start
    summary["config_path"] = "config.toml"
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    from fedgpt.report import write_report

    write_report(run_dir)
    return summary


def open_ledger(
    cfg: RunConfig, run_dir: Path, chash: str, state: ServerState, resume: bool, hooks: Hooks
) -> Ledger | None:
    """The run's ledger (``runtime.ledger``): a new one, or on resume the old one cut back
    to the checkpoint's round and checked against its weights (federation.ledger)."""
    r = cfg.runtime
    if not r.ledger:
        return None
    if not resume:
        return Ledger.start(run_dir, r.ledger_key, chash)
    ledger = Ledger.resume(run_dir, r.ledger_key, chash, state.round, state.weights)
    if ledger is None:
        hooks.log("no ledger.jsonl to continue: the rest of this run keeps none")
    return ledger


def run_round_with_retries(
    server: FederatedServer,
    state: ServerState,
    cfg: RunConfig,
    faults: FaultInjector | None,
    hooks: Hooks,
) -> tuple[ServerState, RoundResult, int]:
    """One round; below quorum (``runtime.min_replies``) the same round is tried again, up
    to ``runtime.round_retries`` more times. Returns (state, result, attempts made)."""
    attempt = 0
    while True:
        if faults is not None:
            faults.attempt = attempt  # a retry draws its faults afresh
        new_state, result = server.run_round(state)
        if result.below_quorum is None or attempt >= cfg.runtime.round_retries:
            return new_state, result, attempt + 1
        attempt += 1
        hooks.log(
            f"round {result.round}: {result.below_quorum}; "
            f"retry {attempt} of {cfg.runtime.round_retries}"
        )


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

    w, info = train_centralized(prep.fm, prep.init, prep.data, cfg, steps, on_progress=adv)
    hooks.stage("baseline: centralized evaluation", len(prep.data))
    ev = server.evaluate(w, 0)
    central = {**info, **{k: ev[k] for k in ("test_loss", "test_accuracy", "perplexity")}}
    ids, sampled = sample_local_clients(list(prep.data), cfg.baselines.local_clients, cfg.seed)
    hooks.stage(f"baseline: local-only ({len(ids)} clients)", len(ids))
    local = train_local_only(
        prep.fm, prep.init, prep.data, cfg, ids, on_progress=lambda cid: hooks.advance()
    )
    local["sampled"] = sampled
    per = fed_eval.get("per_client", {})
    same = [per[c]["accuracy"] for c in ids if c in per]
    local["federated_accuracy_same_clients"] = float(np.mean(same)) if same else None
    return {"centralized": central, "local_only": local}
