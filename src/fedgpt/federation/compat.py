"""Which components combine, derived in one place from what each declares.

Every refusal is one line naming the clashing settings. The declarations:

* aggregator (:mod:`fedgpt.aggregation.base`): ``individual``, ``coverage``;
* privacy mechanism (:mod:`fedgpt.privacy.mechanism`): ``server_clips``,
  ``replaces_aggregator``, ``coverage``, ``releases_client_models``;
* secure sum (:mod:`fedgpt.federation.secure_sum`): ``reveals_individual``, ``coverage``;
* post-steps and strategies: FedDF needs the individual client models; FedMD exchanges
  logits, not updates, so it takes none of the update-side components.

docs/aggregation.md prints the resulting matrix; tests/test_compatibility.py checks all
of it against an independent statement.
"""

from __future__ import annotations

from fedgpt.aggregation.base import AGGREGATORS
from fedgpt.errors import ConfigError
from fedgpt.federation.secure_sum import SECURE_SUMS
from fedgpt.privacy.mechanism import PRIVACY


def tiers_requested(cfg) -> bool:
    """Whether the configuration asks for device tiers other than "full"."""
    d = cfg.devices
    return d.tier != "full" or any(t != "full" for t in [*d.tiers.values(), *d.mix.keys()])


def refusal(cfg, tiers: bool | None = None) -> str | None:
    """Why the components of ``cfg`` do not combine (one line), or None."""
    f, p = cfg.federation, cfg.privacy
    agg, kind = AGGREGATORS.get(f.aggregator.kind), f.aggregator.kind
    mech, ss = PRIVACY.get(p.mode), SECURE_SUMS.get(p.secure_aggregation)
    tiers = tiers_requested(cfg) if tiers is None else tiers
    sa = f'secure_aggregation = "{p.secure_aggregation}"'
    mode = f'privacy.mode = "{p.mode}"'
    if (why := mech().refusal(cfg)) is not None:
        return why
    if (why := _family_clash(cfg, tiers)) is not None:
        return why
    if (comp := cfg.client.compression) != "none":
        if p.secure_aggregation != "none":
            return (
                f'client.compression = "{comp}" does not combine with {sa}, which encodes '
                'updates its own way; use compression = "none"'
            )
        if f.distill == "fedmd":
            return f'client.compression = "{comp}": federation.distill = "fedmd" sends logits'
    if mech.server_clips and not ss.reveals_individual:
        return (
            f"{mode} clips each update on the server, which cannot see updates under {sa}; "
            'use "local_dp" or "dp_sgd"'
        )
    if agg.individual and not ss.reveals_individual:
        need = f'federation.aggregator = "{kind}" needs individual updates'
        return f'{need}, which {sa} hides; use "fedavg"'
    if agg.individual and mech.replaces_aggregator:
        return (
            f'federation.aggregator = "{kind}" cannot replace the clipped noisy sum of '
            f'{mode}; use "fedavg"'
        )
    default_norm = type(f).model_fields["max_update_norm"].default
    if f.max_update_norm not in (0, default_norm) and not ss.reveals_individual:
        # the default bound applies where the server sees updates; a chosen one is refused
        return f"federation.max_update_norm needs to see each update, which {sa} hides"
    if f.distill == "fedmd":
        clash = _fedmd_clash(cfg, kind, mode, sa, tiers)
        if clash:
            return (
                'federation.distill = "fedmd" exchanges logits, not updates: it does not '
                f"combine with {clash}"
            )
    if tiers:
        agg_key = f'federation.aggregator = "{kind}"'
        for what, ok in ((mode, mech.coverage), (sa, ss.coverage), (agg_key, agg.coverage)):
            if not ok:
                return (
                    "device tiers other than 'full' need per-parameter coverage counts over "
                    f"individual slices; they do not combine with {what}"
                )
    if f.distill == "feddf" and not ss.reveals_individual:
        return f'federation.distill = "feddf" needs each client\'s model, which {sa} hides'
    if f.distill == "feddf" and not mech.releases_client_models:
        return (
            'federation.distill = "feddf" needs each client\'s model, which central DP does '
            "not release (the teachers would leak un-noised updates)"
        )
    return None


def _family_clash(cfg, tiers: bool) -> str | None:
    """The classical reference (``model.family`` logistic or mlp) reads raw features: it
    goes with ``task.kind = "tabular"`` only, and with nothing made for language models."""
    m = cfg.model
    fam = f'model.family = "{m.family}"'
    if m.head == "classifier" and (m.family != "causal_lm" or cfg.task.kind != "classification"):
        return 'model.head = "classifier" needs task.kind = "classification" (a language model)'
    if m.family == "causal_lm":
        if cfg.task.kind == "tabular":
            return 'task.kind = "tabular" needs model.family = "logistic" or "mlp"'
        return None
    if cfg.task.kind != "tabular":
        return f'{fam} reads raw features: set task.kind = "tabular"'
    clashes = [
        ("model.lora", m.lora.enabled),
        ("model.path", bool(m.path)),
        ("model.gradient_checkpointing", m.gradient_checkpointing),
        ("data.public_plays", bool(cfg.data.public_plays)),
        ("device tiers", tiers),
    ]
    what = next((w for w, on in clashes if on), None)
    return None if what is None else f"{fam} (a classical model) does not take {what}"


def _fedmd_clash(cfg, kind: str, mode: str, sa: str, tiers: bool) -> str | None:
    f, p = cfg.federation, cfg.privacy
    clashes = [
        (mode, PRIVACY.get(p.mode).active),
        (sa, p.secure_aggregation != "none"),
        (f'federation.aggregator = "{kind}"', AGGREGATORS.get(kind).individual),
        ("federation.hybrid_lambda > 0", f.hybrid_lambda > 0),
        ("model.lora", cfg.model.lora.enabled),
        ("model.path", bool(cfg.model.path) and f.fedmd_client_layers > 0),
        ("device tiers", tiers),
    ]
    return next((what for what, on in clashes if on), None)


def check(cfg, tiers: bool | None = None) -> None:
    """Raise :class:`ConfigError` (one line) if the components of ``cfg`` clash, or an
    aggregator's own settings are invalid."""
    why = refusal(cfg, tiers)
    if why is not None:
        raise ConfigError(why)
