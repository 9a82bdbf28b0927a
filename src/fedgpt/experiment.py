"""A whole federated fine-tuning run as a library call: data → model → rounds → baselines
→ run folder (config, metrics, checkpoints, model, summary, report).

``run_experiment`` is what ``fedgpt run`` calls; a library user can call it too, or use
the pieces (``prepare`` then ``FederatedServer``) directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedgpt.baselines import sample_local_clients, train_centralized, train_local_only
from fedgpt.client.app import ClientApp, ClientData, client_seed
from fedgpt.config import RunConfig, load_config
from fedgpt.data import ClientText
from fedgpt.drive import Hooks, drive, open_ledger, read_rows, run_round_with_retries  # noqa: F401
from fedgpt.errors import ConfigError, RunError
from fedgpt.federation.loop import FederatedServer
from fedgpt.federation.sampling import clients_per_round
from fedgpt.models.build import ModelBundle, build_model
from fedgpt.models.params import FlatModel, bind_flat
from fedgpt.privacy.engine import ServerPrivacy
from fedgpt.runtime import InProcessRuntime
from fedgpt.runtime.faults import FaultInjector


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
    return prepare_with(cfg, clients, build_model(cfg.model, (c.train for c in clients), cfg.seed))


def prepare_with(cfg: RunConfig, clients: list[ClientText], bundle: ModelBundle) -> Prepared:
    """Tokenise ``clients`` (and the public plays, ``data.public_plays``) with ``bundle``'s
    codec: what ``prepare`` does once the clients and the model are known (a Flower node
    holds only its own clients; the server none)."""
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
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
    return Prepared(list(clients), bundle, fm, data, fm.flat.clone(), public)


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


def wire_server(cfg: RunConfig, prep: Prepared, server: FederatedServer, tiers: dict) -> None:
    """The server-side wiring every runtime shares: the server's model and public text
    (learned attention, distillation), FedAtt's layer map, hybrid aggregation's public
    steps and the device tiers' coverage masks."""
    f = cfg.federation
    server.fm, server.public = prep.fm, prep.public
    server.vocab_size = prep.bundle.codec.vocab_size
    if f.aggregator == "fedatt":
        from fedgpt.aggregation.fedatt import layer_ids

        server.layer_ids = layer_ids(prep.fm.spec)
    if f.aggregator == "attention":
        from fedgpt.client.batches import sample_windows

        gen = torch.Generator().manual_seed(client_seed(cfg.seed, 0, "__attention_val__"))
        server.attention_val = sample_windows(
            prep.public, f.attention_windows, cfg.client.seq_len, gen
        )
    if f.distill == "feddf":
        from fedgpt.federation.distill import feddf_step

        server.distill_step = feddf_step(prep.fm, prep.public, cfg)
    if f.hybrid_lambda > 0:
        from fedgpt.federation.hybrid import public_step

        server.public_step = public_step(prep.fm, prep.public, cfg)
    if tiers:
        server.tier_masks = {t: m for t, _, m in tiers.values()}


def fedmd_client(cfg: RunConfig, prep: Prepared):
    """FedMD's client side: the clients' own models (``fedmd_client_layers`` blocks, or
    the server's architecture) and the public text."""
    from fedgpt.federation.fedmd import FedMDClient

    f = cfg.federation
    fm, init = prep.fm, prep.init
    if f.fedmd_client_layers and f.fedmd_client_layers != cfg.model.n_layer:
        small = cfg.model.model_copy(update={"n_layer": f.fedmd_client_layers})
        fm = bind_flat(build_model(small, (c.train for c in prep.clients), cfg.seed).model)
        init = fm.flat.clone()
    return FedMDClient(fm, init, prep.public, cfg.client)


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
    wire_server(cfg, prep, server, tiers)
    if cfg.federation.distill == "fedmd":
        app.fedmd = fedmd_client(cfg, prep)
    if tiers:
        app.tiers = tiers
        counts: dict[str, int] = {}
        for t, _, _ in tiers.values():
            counts[t] = counts.get(t, 0) + 1
        hooks.log("device tiers: " + ", ".join(f"{t} x{n}" for t, n in sorted(counts.items())))
    if keys is not None:
        from fedgpt.privacy.ckks import CkksClient, CkksServer

        app.ckks = CkksClient(keys[0])  # the clients hold the secret context
        server.ckks = CkksServer(keys[1])  # the server only the public one
    baselines = None
    if cfg.baselines.enabled:

        def baselines(rows: list[dict], last_eval: dict) -> dict:
            return run_baselines(cfg, prep, server, rows, last_eval, hooks)

    return drive(
        cfg,
        prep,
        server,
        privacy,
        run_dir,
        hooks,
        resume=resume,
        faults=faults,
        app=app,
        baselines=baselines,
        t_start=t_start,
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
