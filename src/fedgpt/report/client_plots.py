"""Plots of the clients: how the final model serves each of them, and which clients pull
away from the aggregate (dissimilarity) or weigh most in it (FedAtt α).

With a fraction of the clients sampled per round, a clients × rounds heat-map is mostly
blank; these plots instead show the spread per round (median and 10-90 % band over the
round's participants) beside the few clients with the highest mean, so the outliers are
read at a glance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from fedgpt.report.plots import (
    CENTRALIZED_COLOR,
    DPI,
    FEDERATED_COLOR,
    LOCAL_COLOR,
    WIDE_FIGSIZE,
    Row,
    _round_axis,
    _save,
    finite,
    nested,
    unit,
)

TOP = 10  # clients named in the right-hand panels


def plot_site_auc(summary: Mapping[str, Any], path: Path) -> Path | None:
    """Classification: each site's AUC under the final model beside its local-only model's,
    and the pooled AUC of the federated and centralized models dashed."""
    per = summary.get("federated_per_client") or {}
    sites = sorted(c for c, v in per.items() if isinstance(v, Mapping) and "auc" in v)
    if not sites:
        return None
    local = nested(summary, "baselines", "local_only", "per_client") or []
    own = {c.get("client"): finite(c.get("test_auc")) for c in local if isinstance(c, Mapping)}
    fed = [finite(per[c].get("auc")) for c in sites]
    x = np.arange(len(sites))
    fig = Figure(figsize=(max(7.0, 0.7 * len(sites) + 2), 4.0), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.bar(x - 0.2, [a if a is not None else 0 for a in fed], 0.4, color=FEDERATED_COLOR,
           label="federated model")  # fmt: skip
    if own:
        ax.bar(x + 0.2, [own.get(c) or 0 for c in sites], 0.4, color=LOCAL_COLOR,
               label="the site's local-only model")  # fmt: skip
    for key, color, label in (
        ("federated", FEDERATED_COLOR, "federated, pooled"),
        ("baselines.centralized", CENTRALIZED_COLOR, "centralized, pooled"),
    ):
        auc = finite(nested(summary, *key.split("."), "test_auc"))
        if auc is not None:
            ax.axhline(auc, linestyle="--", color=color, label=f"{label}: {auc:.3f}")
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.set_xticks(x, sites, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUC on the site's test records")
    ax.set_title("AUC per site (a missing bar: the site's test records hold one class)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return _save(fig, path)


def plot_client_accuracy(summary: Mapping[str, Any], path: Path) -> Path | None:
    """The distribution of the final model's accuracy over the clients (each on its own test
    text), beside that of the local-only models of the clients the baseline trained, with the
    centralized model's accuracy dashed: who the federation serves well, and who not."""
    fed = [finite(v.get("accuracy")) for v in (summary.get("federated_per_client") or {}).values()
           if isinstance(v, Mapping)]  # fmt: skip
    fed = [a for a in fed if a is not None]
    if len(fed) < 2:
        return None
    local = nested(summary, "baselines", "local_only", "per_client") or []
    own = [a for a in (finite(c.get("test_accuracy")) for c in local if isinstance(c, Mapping))
           if a is not None]  # fmt: skip
    lo, hi = min(fed + own), max(fed + own)
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 21)
    fig = Figure(figsize=(7.0, 4.0), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.hist(fed, bins=bins, alpha=0.7, color=FEDERATED_COLOR,
            label=f"federated model ({len(fed)} clients, median {np.median(fed):.2%})")  # fmt: skip
    if own:
        what = f"local-only models ({len(own)} clients, median {np.median(own):.2%})"
        ax.hist(own, bins=bins, alpha=0.5, color=LOCAL_COLOR, label=what)
    central = finite(nested(summary, "baselines", "centralized", "test_accuracy"))
    if central is not None:
        ax.axvline(central, linestyle="--", color=CENTRALIZED_COLOR,
                   label=f"centralized (pooled test): {central:.2%}")  # fmt: skip
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel(f"{unit(summary)} accuracy on the client's own test text")
    ax.set_ylabel("clients")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Accuracy per client at the end of the run")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_heterogeneity(rows: Sequence[Row], path: Path) -> Path | None:
    """Each participant's dissimilarity ‖Δ_k − Δ‖/‖Δ‖ from the round's aggregate: its spread
    per round, and the clients furthest from the aggregate on average."""
    cells = [(int(r["round"]), cid, float(v["rel"]))
             for r in rows for cid, v in (r.get("heterogeneity") or {}).items()]  # fmt: skip
    return _client_spread(cells, rows, path, "Client dissimilarity from the aggregate, "
                          "‖Δk − Δ‖/‖Δ‖ (0 = agrees with it)", "relative distance")  # fmt: skip


def plot_attention(rows: Sequence[Row], path: Path) -> Path | None:
    """The FedAtt weight α of each participant (mean over layers): its spread per round, and
    the clients the aggregate leaned on most."""
    cells = [(int(r["round"]), cid, float(v))
             for r in rows for cid, v in (r.get("attention") or {}).items()]  # fmt: skip
    return _client_spread(
        cells, rows, path, "FedAtt attention α per client", "α (mean over layers)"
    )


def _client_spread(cells, rows: Sequence[Row], path: Path, title: str, label: str):
    """Left: median and 10-90 % band of the (round, client, value) cells per round.
    Right: the TOP clients by mean value, with how many rounds each took part in."""
    if not cells:
        return None
    by_round: dict[int, list[float]] = {}
    by_client: dict[str, list[float]] = {}
    for rnd, cid, v in cells:
        by_round.setdefault(rnd, []).append(v)
        by_client.setdefault(cid, []).append(v)
    rounds = sorted(by_round)
    q10, med, q90 = (
        np.array([np.quantile(by_round[r], q) for r in rounds]) for q in (0.1, 0.5, 0.9)
    )
    fig = Figure(figsize=WIDE_FIGSIZE, dpi=DPI, layout="constrained")
    ax, bars = fig.subplots(1, 2, width_ratios=(3, 2))
    ax.fill_between(
        rounds, q10, q90, color=FEDERATED_COLOR, alpha=0.25, label="10-90 % of participants"
    )
    ax.plot(rounds, med, marker="o", color=FEDERATED_COLOR, label="median")
    ax.plot(rounds, [max(by_round[r]) for r in rounds], color="tab:red", alpha=0.6, label="largest")
    ax.set_ylabel(label)
    _round_axis(ax, rows)
    ax.legend(fontsize="small")
    top = sorted(by_client, key=lambda c: (-float(np.mean(by_client[c])), c))[:TOP]
    means = [float(np.mean(by_client[c])) for c in top]
    names = [f"{c} ({len(by_client[c])} rds)" for c in top]
    bars.barh(range(len(top)), means, color=FEDERATED_COLOR)
    bars.set_yticks(range(len(top)), names, fontsize=7)
    bars.invert_yaxis()
    bars.set_xlabel(f"mean {label}")
    bars.set_title(
        f"highest {min(TOP, len(by_client))} of {len(by_client)} clients", fontsize="small"
    )
    bars.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)
