"""One builder for every runtime: configuration → data, model, strategy and server.

``run_experiment`` (in-process), the Flower ServerApp and the Flower ClientApp all call
these, so a configuration means the same thing wherever it runs:

* :func:`prepare` / :func:`prepare_with` — the clients' text, the model and its
  tokenised data (:class:`Prepared`);
* :func:`build_strategy` — the round's components from their registries (secure sum,
  aggregator wrapped by the privacy mechanism, server optimiser, post-steps, or FedMD),
  after :func:`fedgpt.federation.compat.check` has refused what does not combine;
* :func:`build_server` — the :class:`~fedgpt.federation.loop.FederatedServer`, complete
  when constructed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import fedgpt.aggregation  # noqa: F401  (registers the built-in aggregators)
from fedgpt.aggregation.base import AGGREGATORS, Aggregator, ServerContext
from fedgpt.aggregation.server_opt import make_server_optimizer
from fedgpt.client.trainer import ClientData
from fedgpt.config import RunConfig
from fedgpt.data import ClientText
from fedgpt.errors import ConfigError
from fedgpt.federation import compat
from fedgpt.federation.loop import FederatedServer
from fedgpt.federation.sampling import clients_per_round
from fedgpt.federation.secure_sum import SECURE_SUMS, CkksSum
from fedgpt.federation.strategy import FedAvgFamily, Strategy
from fedgpt.malloc import return_large_blocks
from fedgpt.messages import Runtime
from fedgpt.models.build import ModelBundle, build_model
from fedgpt.models.params import FlatModel, bind_flat
from fedgpt.privacy.engine import ServerPrivacy
from fedgpt.privacy.mechanism import PRIVACY, mechanism_for
from fedgpt.tasks import TASKS, Task


def _records(module: str, name: str):
    def loader():
        import importlib

        return getattr(importlib.import_module(f"fedgpt.data.{module}"), name)

    return loader


#: the data sources of labelled records: source -> () -> its clients' loader
RECORDS = {
    "pima": _records("pima", "pima_clients"),
    "lending_club": _records("lending", "lending_clients"),
    "lung_cancer": _records("rsets", "lung_clients"),
    "hmda": _records("rsets", "hmda_clients"),
    "drug_reviews": _records("drugs", "drug_clients"),
    "cgd": _records("trials", "cgd_clients"),
    "opt": _records("trials", "opt_clients"),
}


def load_clients(cfg: RunConfig) -> list[ClientText]:
    """The clients of the run, as configured (a seeded sample if ``data.max_clients``)."""
    d = cfg.data
    if d.source == "dir":
        from fedgpt.data import load_client_dir

        clients = load_client_dir(d.path, train_fraction=d.train_fraction)
    elif d.source in RECORDS:
        from fedgpt.data.clients import Partitioning

        part = Partitioning(d.partition, d.num_clients, d.dirichlet_alpha, cfg.seed,
                            d.train_fraction, d.max_records)  # fmt: skip
        clients = RECORDS[d.source]()(part)
        if cfg.task.kind == "causal_lm":  # the records as text, one per line
            from fedgpt.data.clients import records_as_text

            clients = records_as_text(clients)
        elif cfg.task.kind == "instruction":  # the class as the answer to generate
            from fedgpt.data.clients import records_as_instructions

            clients = records_as_instructions(clients)
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

    @property
    def vocab_size(self) -> int:
        """The language model's vocabulary (0 for the classical reference)."""
        return self.bundle.codec.vocab_size if self.bundle.codec is not None else 0

    def context(self, cfg: RunConfig) -> ServerContext:
        """What server-side components may use: the model, public text, seed, lengths."""
        return ServerContext(self.fm, self.public, cfg.seed, cfg.client.seq_len, self.vocab_size)


def prepare(cfg: RunConfig) -> Prepared:
    """Load the clients, build the model and tokenise every client's text."""
    compat.check(cfg)  # settings that cannot combine are refused before any data is read
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    clients = load_clients(cfg)
    texts = (t for c in clients for t in texts_of(c.train))
    classes = next((len(c.train.classes) for c in clients if hasattr(c.train, "classes")), 2)
    prep = prepare_with(cfg, clients, run_model(cfg, texts, classes))
    check_usable(prep, cfg.data.path or cfg.data.source)
    return prep


def run_model(cfg: RunConfig, texts=(), num_classes: int = 2) -> ModelBundle:
    """The run's model: a language model (``model.family = "causal_lm"``, its vocabulary
    from ``texts`` when built fresh) or the classical reference over the data source's
    numeric features; a classifier's head or output has ``num_classes`` classes."""
    if cfg.model.family == "causal_lm":
        return build_model(cfg.model, texts, cfg.seed, num_classes)
    from fedgpt.models.build import tabular_bundle

    return tabular_bundle(cfg.model, feature_width(cfg.data.source), cfg.seed, num_classes)


def feature_width(source: str) -> int:
    """How many numbers the loader of ``source`` encodes each record as."""
    if source == "pima":
        from fedgpt.data.pima import SCALES

        return len(SCALES)
    if source == "lending_club":
        from fedgpt.data.lending import NUMERIC

        return len(NUMERIC)
    from fedgpt.data import rsets, trials

    width = {**rsets.WIDTH, **trials.WIDTH}
    if source in width:
        return width[source]
    readable = ["pima", "lending_club", *width]
    raise ConfigError(
        f'model.family: data.source = "{source}" has no numeric features; the classical '
        f"models read {', '.join(readable)}"
    )


def texts_of(part) -> list[str]:
    """The text of a client's data, for building a character vocabulary: free text, or
    every record with its question and class names."""
    from fedgpt.data.records import Examples, Instructions

    if isinstance(part, Examples):
        return [*part.texts, part.question, *(" " + c for c in part.classes)]
    if isinstance(part, Instructions):
        return [*part.prompts, *part.responses]
    return [part]


def check_usable(prep: Prepared, where: str) -> None:
    """A federation that could not train or could not be evaluated is refused before it
    starts (one ``DataError``): some client needs 2 tokens of training text, some client
    2 tokens of test text."""
    from fedgpt.errors import DataError

    if not prep.data:
        return
    if all(d.train.numel() < 2 for d in prep.data.values()):
        raise DataError(
            f"{where}: every client's training text is too short (fewer than 2 tokens): "
            "nothing to train on"
        )
    if all(d.test.numel() < 2 for d in prep.data.values()):
        raise DataError(
            f"{where}: no client has any test text (2 tokens or more): add test.jsonl files "
            "or more lines to split (data.train_fraction)"
        )


def prepare_with(cfg: RunConfig, clients: list[ClientText], bundle: ModelBundle) -> Prepared:
    """Tokenise ``clients`` (and the public plays, ``data.public_plays``) with ``bundle``'s
    codec: what ``prepare`` does once the clients and the model are known (a Flower node
    holds only its own clients; the server none)."""
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    from fedgpt.models.device import place, resolve_device

    place(bundle.model, cfg.model.dtype, resolve_device(cfg.runtime.device))
    fm = bind_flat(bundle.model)
    task, codec, seq = build_task(cfg), bundle.codec, cfg.client.seq_len
    data = {
        c.client_id: ClientData(
            c.client_id, task.encode(codec, c.train, seq), task.encode(codec, c.test, seq)
        )
        for c in clients
    }
    public = None
    if cfg.data.public_plays:
        from fedgpt.data import shakespeare_clients

        roles = shakespeare_clients(min_chars=1, plays=cfg.data.public_plays)
        public = torch.from_numpy(codec.encode("\n".join(c.train + "\n" + c.test for c in roles)))
    return Prepared(list(clients), bundle, fm, data, fm.weights(), public)


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
            spec, mb, n_layer, n_embd, prep.bundle.codec.vocab_size, c.batch_size, c.seq_len,
            lora_r, frozen,
        )  # fmt: skip

    assigned = assign_tiers(d, ids, cfg.seed, choose)
    partial = {cid: t for cid, t in assigned.items() if t != "full"}
    if not partial:
        return {}
    compat.check(cfg, tiers=True)  # memory budgets may pick tiers the config did not name
    cache = {
        t: (tier_params(spec, t, n_layer, lora_r), tier_mask(spec, t, n_layer, lora_r))
        for t in set(partial.values())
    }
    return {cid: (t, *cache[t]) for cid, t in partial.items()}


def make_privacy(cfg: RunConfig, num_clients: int) -> ServerPrivacy:
    """The run's privacy accounting (checks the privacy settings before anything runs)."""
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


def build_task(cfg: RunConfig) -> Task:
    """``task.kind`` from its registry, with its settings (``task`` table) if it has any."""
    cls = TASKS.get(cfg.task.kind)
    params = cfg.task.params
    return cls(**params) if params else cls()


def check_config(cfg: RunConfig) -> RunConfig:
    """Refuse (one line) what the configuration's components cannot do together, an
    unknown component name, or a component setting out of range; returns ``cfg``."""
    make_server_optimizer(cfg.federation)
    TASKS.get(cfg.task.kind)
    PRIVACY.get(cfg.privacy.mode)
    spec = cfg.federation.aggregator
    validate_section(AGGREGATORS.get(spec.kind).Config, spec.model_dump(), "federation.aggregator")
    compat.check(cfg)
    return cfg


def load_run_config(path=None, overrides: list[str] | None = None) -> RunConfig:
    """:func:`fedgpt.config.load_config`, then :func:`check_config`."""
    from fedgpt.config import load_config

    return check_config(load_config(path, overrides))


def aggregator_reference() -> str:
    """Markdown: every registered aggregator's settings, defaults and meanings (the
    "Aggregator settings" section of docs/configuration.md)."""
    lines = ["| aggregator | setting | default | meaning |", "| --- | --- | --- | --- |"]
    for name in AGGREGATORS:
        fields = {k: v for k, v in AGGREGATORS.get(name).Config.model_fields.items() if k != "kind"}
        if not fields:
            lines.append(f"| `{name}` | | | (no settings) |")
        for key, fld in fields.items():
            lines.append(f"| `{name}` | `{key}` | `{fld.default!r}` | {fld.description or ''} |")
    return "\n".join(lines) + "\n"


def build_aggregator(cfg: RunConfig, ctx: ServerContext, privacy: ServerPrivacy) -> Aggregator:
    """``federation.aggregator`` from its registry, its settings validated, wrapped by the
    privacy mechanism (central DP replaces the mean by DP-FedAvg's noised sum)."""
    spec = cfg.federation.aggregator
    cls = AGGREGATORS.get(spec.kind)
    agg = cls(validate_section(cls.Config, spec.model_dump(), "federation.aggregator"), ctx)
    return PRIVACY.get(cfg.privacy.mode)().wrap(agg, privacy)


def validate_section(model, data: dict, key: str):
    """``model.model_validate(data)``, or a one-line ConfigError naming ``key.field``."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join([key, *(str(p) for p in err["loc"])])
        if err["type"] == "extra_forbidden":
            return _raise(f"unknown config key '{where}'")
        return _raise(f"config key '{where}': {err['msg'].lower()}, got {err.get('input')!r}")


def _raise(msg: str):
    raise ConfigError(msg)


def build_strategy(
    cfg: RunConfig,
    ctx: ServerContext,
    privacy: ServerPrivacy,
    tiers: dict,
    ckks_server=None,
    registry=None,
) -> Strategy:
    """The round's strategy, composed from the registries (``ctx``: the server's model
    and public text, :meth:`Prepared.context`; ``registry``: SecAgg's client identities,
    public part)."""
    compat.check(cfg, tiers=bool(tiers))
    f, quorum = cfg.federation, cfg.runtime.min_replies
    if f.distill == "fedmd":
        from fedgpt.federation.fedmd import FedMDStrategy

        return FedMDStrategy(cfg, ctx, quorum)
    masks = {t: m for t, _, m in tiers.values()}
    kind = cfg.privacy.secure_aggregation
    if kind == "ckks":
        secure_sum = CkksSum(cfg, masks, server=ckks_server, registry=registry)
    elif kind == "secagg":
        secure_sum = SECURE_SUMS.get(kind)(
            cfg, masks, registry=registry, codec=privacy.secagg_codec
        )
    else:
        secure_sum = SECURE_SUMS.get(kind)(cfg, masks)
    strategy = FedAvgFamily(
        secure_sum,
        build_aggregator(cfg, ctx, privacy),
        make_server_optimizer(f),
        seed=cfg.seed,
        quorum=quorum,
        post_steps=post_steps(cfg, ctx),
        log_heterogeneity=not privacy.active,
        stream=f.streaming and f.distill != "feddf",  # FedDF's teachers are the updates
    )
    check_held(cfg, strategy, privacy.per_round)
    return strategy


def check_held(cfg: RunConfig, strategy: FedAvgFamily, per_round: int) -> None:
    """A strategy that holds every update of a round (it does not stream) may hold at most
    ``federation.max_held_updates`` of them: a larger cohort is refused in one line."""
    f = cfg.federation
    if strategy.stream or per_round <= f.max_held_updates:
        return
    if not f.streaming:
        why = "federation.streaming = false"
    elif f.distill == "feddf":
        why = 'federation.distill = "feddf" (its teachers are the updates)'
    elif not strategy.aggregator.streaming:
        why = f"the {f.aggregator.kind} aggregator needs every update at once"
    else:
        why = f'privacy.secure_aggregation = "{cfg.privacy.secure_aggregation}" does not stream'
    raise ConfigError(
        f"federation.max_held_updates = {f.max_held_updates}, but this run samples {per_round} "
        f"clients per round and {why}: lower federation.fraction / min_clients or raise "
        "federation.max_held_updates"
    )


def post_steps(cfg: RunConfig, ctx: ServerContext) -> tuple:
    """Hybrid aggregation's public step, then FedDF's ensemble distillation."""
    f, steps = cfg.federation, []
    if f.hybrid_lambda > 0:
        from fedgpt.federation.hybrid import public_step

        hybrid = public_step(ctx.fm, ctx.public, cfg)
        steps.append(lambda w, rnd, base, updates: hybrid(w, rnd))
    if f.distill == "feddf":
        from fedgpt.federation.distill import feddf_step

        feddf = feddf_step(ctx.fm, ctx.public, cfg)
        steps.append(
            lambda w, rnd, base, updates: (
                w if updates is None else feddf(w, base, updates.deltas, rnd)
            )
        )
    return tuple(steps)


def build_server(
    cfg: RunConfig,
    prep: Prepared,
    runtime: Runtime,
    ids: list[str],
    ckks_public: bytes | None = None,
    *,
    privacy: ServerPrivacy | None = None,
    tiers: dict | None = None,
    registry=None,
) -> tuple[FederatedServer, ServerPrivacy, dict]:
    """The server over ``runtime`` for clients ``ids``, complete: (server, privacy, tiers)
    (``privacy`` and ``tiers`` are made here unless given; ``registry``: SecAgg's client
    identities, public part, or None to read them from ``privacy.secagg_identities``)."""
    return_large_blocks()  # freed updates go back to the OS: the server stays O(model)
    privacy = privacy if privacy is not None else make_privacy(cfg, len(ids))
    tiers = tiers if tiers is not None else device_tiers(cfg, prep, ids)
    ckks = None
    if ckks_public is not None:
        from fedgpt.privacy.ckks import CkksServer

        ckks = CkksServer(ckks_public)  # the server holds only the public context
    if registry is None and cfg.privacy.secagg_identities:
        registry = secagg_identities(cfg, [], own=())
    strategy = build_strategy(cfg, prep.context(cfg), privacy, tiers, ckks, registry)
    return FederatedServer(cfg, runtime, ids, strategy, privacy), privacy, tiers


def secagg_identities(cfg: RunConfig, ids: list[str], own=None):
    """The clients' identities under SecAgg and CKKS
    (:class:`~fedgpt.privacy.secagg.identity.Identities`): read from
    ``privacy.secagg_identities`` (the private keys of ``own``, default ``ids``), or, when
    that is empty, made fresh for ``ids`` (a run whose clients all live in this process);
    None without a secure sum."""
    if cfg.privacy.secure_aggregation == "none":
        return None
    from fedgpt.privacy.secagg.identity import Identities

    if cfg.privacy.secagg_identities:
        return Identities.read(cfg.privacy.secagg_identities, ids if own is None else own)
    return Identities.generate(ids)


def server_for(
    cfg: RunConfig,
    runtime: Runtime,
    ids: list[str],
    fm: FlatModel,
    *,
    public: torch.Tensor | None = None,
    vocab_size: int = 0,
    ckks_public: bytes | None = None,
) -> FederatedServer:
    """The server for a model you already hold (``fm``, a bound flat view), without
    device tiers: what :func:`build_server` makes from a :class:`Prepared`."""
    return_large_blocks()
    ctx = ServerContext(fm, public, cfg.seed, cfg.client.seq_len, vocab_size)
    privacy = make_privacy(cfg, len(ids))
    ckks = None
    if ckks_public is not None:
        from fedgpt.privacy.ckks import CkksServer

        ckks = CkksServer(ckks_public)
    return FederatedServer(cfg, runtime, ids, build_strategy(cfg, ctx, privacy, {}, ckks), privacy)


def client_setup(cfg: RunConfig, ids: list[str], privacy: ServerPrivacy, tiers: dict):
    """What remote clients must learn from the server before the first round (the
    federation's client ids, the local noise multiplier, whether tiers apply), or None
    when nothing they do depends on it."""
    needed = privacy.mechanism.clients_need_z or cfg.attack.fraction > 0 or bool(tiers)
    needed |= SECURE_SUMS.get(cfg.privacy.secure_aggregation).clients_need_cohort
    if not needed:
        return None
    return {"clients": list(ids), "z": float(privacy.z), "tiers": bool(tiers)}


def receipts_root(cfg: RunConfig, node_setting: str = "") -> str | None:
    """Where clients keep their receipts: a node's ``receipts-dir``, else
    ``runtime.receipts_dir``, else ``$FEDGPT_HOME/receipts``; None when the run sends none."""
    if not (cfg.runtime.receipts and cfg.runtime.ledger):
        return None
    from fedgpt.federation.ledger_keys import fedgpt_home

    return node_setting or cfg.runtime.receipts_dir or str(fedgpt_home() / "receipts")


def build_client_app(
    cfg: RunConfig,
    prep: Prepared,
    all_ids: list[str],
    noise_multiplier: float = 0.0,
    tiers: dict | None = None,
    ckks_secret: bytes | None = None,
    identities=None,
    receipts_dir: str | None = None,
):
    """The client side for the clients whose data ``prep`` holds, the same on every
    runtime: the task, local training with its client steps (device tier slice, attack
    simulation, local DP / DP-SGD with ``noise_multiplier``, CKKS encryption with
    ``ckks_secret``) and FedMD's own models. ``all_ids`` are the federation's clients
    (the seeded choice of simulated attackers is over all of them); the clients keep the
    server's receipts under ``receipts_dir`` (None: they keep none)."""
    from fedgpt.client.steps import TierSlice
    from fedgpt.federation.client_app import ClientApp
    from fedgpt.federation.receipts import ReceiptBook

    after = []
    if cfg.attack.fraction > 0:
        from fedgpt.client.attack import Poison, malicious_clients

        bad = frozenset(malicious_clients(all_ids, cfg.attack.fraction, cfg.seed))
        after.append(Poison(bad, cfg.attack.kind, cfg.attack.scale))
    secure, f, p = [], cfg.federation, cfg.privacy
    per_round = clients_per_round(len(all_ids), f.fraction, f.min_clients)
    if cfg.privacy.secure_aggregation == "secagg":
        from fedgpt.federation.secure_sum_client import SecAggClient

        codec = mechanism_for(cfg.privacy).secagg_codec(cfg.privacy, noise_multiplier, per_round)
        secure.append(SecAggClient(cfg.privacy.secagg_threshold, identities, codec))
    if ckks_secret is not None:  # the clients hold the secret context
        from fedgpt.federation.secure_sum_client import CkksEncryption

        secure.append(CkksEncryption(ckks_secret, identities, p.secagg_threshold, per_round))
    return ClientApp.build(
        prep.fm, prep.data, cfg.client, cfg.privacy, noise_multiplier,
        task=build_task(cfg), before=[TierSlice(tiers)] if tiers else [], after=after,
        secure=secure, fedmd=fedmd_client(cfg, prep) if cfg.federation.distill == "fedmd" else None,
        receipts=ReceiptBook(receipts_dir) if receipts_dir else None,
    )  # fmt: skip


def fedmd_client(cfg: RunConfig, prep: Prepared):
    """FedMD's client side: the clients' own models (``fedmd_client_layers`` blocks, or
    the server's architecture) and the public text."""
    from fedgpt.federation.fedmd import FedMDClient

    f = cfg.federation
    fm, init = prep.fm, prep.init
    if f.fedmd_client_layers and f.fedmd_client_layers != cfg.model.n_layer:
        from fedgpt.models.build import build_char_gpt2

        small = cfg.model.model_copy(update={"n_layer": f.fedmd_client_layers})
        tok = prep.bundle.tokenizer  # the server's vocabulary, wherever the clients run
        fm = bind_flat(build_char_gpt2(small, [], cfg.seed, tokenizer=tok).model)
        init = fm.weights()
    return FedMDClient(fm, init, prep.public, cfg.client)
