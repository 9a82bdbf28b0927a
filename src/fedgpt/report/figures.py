"""Every plot of the report, in report order: which file each goes to, and writing them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedgpt.report.client_plots import (
    plot_attention,
    plot_client_accuracy,
    plot_heterogeneity,
    plot_site_auc,
)
from fedgpt.report.plots import (
    Row,
    plot_accuracy_vs_epsilon,
    plot_efficiency,
    plot_epsilon,
    plot_evaluation,
    plot_train_loss,
)

#: Plot names in report order, with the file name each is written to.
PLOT_FILES = {
    "evaluation": "evaluation.png",
    "efficiency": "efficiency.png",
    "clients": "clients.png",
    "sites": "sites_auc.png",
    "train_loss": "train_loss.png",
    "epsilon": "epsilon.png",
    "accuracy_vs_epsilon": "accuracy_vs_epsilon.png",
    "heterogeneity": "heterogeneity.png",
    "attention": "attention.png",
}
STALE = ("traffic.png",)  # written by earlier versions: removed with the report's refresh


def make_plots(rows: Sequence[Row], summary: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write every applicable plot into ``out_dir``; return ``{name: path}`` in report order.

    A plot with no data is skipped, and a stale file of that name from an earlier report of
    the same run folder is removed so the folder matches the report.
    """
    out_dir = Path(out_dir)
    makers = {
        "evaluation": lambda p: plot_evaluation(rows, summary, p),
        "efficiency": lambda p: plot_efficiency(rows, summary, p),
        "clients": lambda p: plot_client_accuracy(summary, p),
        "sites": lambda p: plot_site_auc(summary, p),
        "train_loss": lambda p: plot_train_loss(rows, p),
        "epsilon": lambda p: plot_epsilon(rows, p),
        "accuracy_vs_epsilon": lambda p: plot_accuracy_vs_epsilon(rows, p),
        "heterogeneity": lambda p: plot_heterogeneity(rows, p),
        "attention": lambda p: plot_attention(rows, p),
    }
    written: dict[str, Path] = {}
    for name, filename in PLOT_FILES.items():
        target = out_dir / filename
        result = makers[name](target)
        if result is None:
            target.unlink(missing_ok=True)
        else:
            written[name] = result
    for old in STALE:
        (out_dir / old).unlink(missing_ok=True)
    return written
