"""Plots for the FedGPT run report.

Every function here is pure apart from writing one PNG: it takes the rows of
``metrics.jsonl`` (and, where needed, the parsed ``summary.json``) plus an output path, and
returns the path written or ``None`` when there is nothing to plot. Figures are built with
:class:`matplotlib.figure.Figure` directly, so no pyplot state or interactive backend is
involved. A few small helpers (number coercion, byte units) are shared with
:mod:`fedgpt.report.render`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

Row = Mapping[str, Any]

DPI = 110
FIGSIZE = (7.0, 4.0)
WIDE_FIGSIZE = (10.0, 4.0)
FEDERATED_COLOR = "tab:blue"
CENTRALIZED_COLOR = "tab:green"
LOCAL_COLOR = "tab:orange"
_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def as_float(value: Any) -> float | None:
    """Return ``value`` as a float if it is a real number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def finite(value: Any) -> float | None:
    """Return ``value`` as a float if it is a finite real number, else ``None``."""
    number = as_float(value)
    return number if number is not None and math.isfinite(number) else None


def nested(mapping: Any, *keys: str) -> Any:
    """Follow ``keys`` through nested mappings; ``None`` as soon as a level is missing."""
    current = mapping
    for key in keys:
        if not isinstance(current, Mapping):
            return None
        current = current.get(key)
    return current


def byte_unit(largest: float) -> tuple[str, float]:
    """Pick the binary unit (name, size in bytes) that keeps ``largest`` below 1024."""
    size = 1.0
    for name in _BYTE_UNITS:
        if abs(largest) < size * 1024 or name == _BYTE_UNITS[-1]:
            return name, size
        size *= 1024
    raise AssertionError("unreachable")


def human_bytes(value: Any) -> str:
    """Format a byte count with binary units, e.g. ``1536`` -> ``"1.50 KiB"``."""
    number = finite(value)
    if number is None:
        return "—"
    name, size = byte_unit(number)
    if name == "B":
        return f"{int(number)} B"
    return f"{number / size:.2f} {name}"


def unit(summary: Mapping[str, Any]) -> str:
    """ "classification" for a classification task (a language model's or the classical
    reference's); else "next-character" for the character models FedGPT builds,
    "next-token" for the others."""
    if summary.get("task") in ("classification", "tabular"):
        return "classification"
    name = str(nested(summary, "model", "name") or "")
    return "next-character" if name.startswith("char-") or not name else "next-token"


def series(rows: Sequence[Row], key: str) -> tuple[list[int], list[float]]:
    """Rounds and values of ``key`` for the rows where it is a finite number."""
    xs: list[int] = []
    ys: list[float] = []
    for row in rows:
        value = finite(row.get(key))
        if value is not None:
            xs.append(int(row["round"]))
            ys.append(value)
    return xs, ys


def _round_axis(ax: Axes, rows: Sequence[Row]) -> None:
    """Label the x axis as rounds with integer ticks spanning all logged rounds."""
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if rows:
        rounds = [int(r["round"]) for r in rows]
        ax.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
    ax.grid(True, alpha=0.3)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _references(summary: Mapping[str, Any]) -> list[tuple[str, str, float | None, float | None]]:
    """Baseline reference lines as (label, color, test loss, test accuracy)."""
    refs = []
    central = nested(summary, "baselines", "centralized")
    if isinstance(central, Mapping):
        refs.append(
            (
                "centralized",
                CENTRALIZED_COLOR,
                finite(central.get("test_loss")),
                finite(central.get("test_accuracy")),
            )
        )
    local = nested(summary, "baselines", "local_only")
    if isinstance(local, Mapping):
        refs.append(
            (
                "local-only (mean)",
                LOCAL_COLOR,
                finite(local.get("test_loss_mean")),
                finite(local.get("test_accuracy_mean")),
            )
        )
    return refs


def plot_evaluation(rows: Sequence[Row], summary: Mapping[str, Any], path: Path) -> Path | None:
    """Two panels: test loss and accuracy per round, with baselines dashed."""
    loss_x, loss_y = series(rows, "test_loss")
    acc_x, acc_y = series(rows, "test_accuracy")
    refs = _references(summary)
    if not loss_x and not acc_x and not any(r[2] is not None or r[3] is not None for r in refs):
        return None
    fig = Figure(figsize=WIDE_FIGSIZE, dpi=DPI, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, xs, ys in ((ax_loss, loss_x, loss_y), (ax_acc, acc_x, acc_y)):
        if xs:
            final = f"{ys[-1]:.4f}" if ax is ax_loss else f"{ys[-1]:.2%}"
            ax.plot(xs, ys, marker="o", color=FEDERATED_COLOR, label=f"federated (last: {final})")
        _round_axis(ax, rows)
    own_x, own_y = series(rows, "personal_accuracy")
    if own_x:  # FedMD: the sampled clients' own models on their own test text
        ax_acc.plot(
            own_x, own_y, color="tab:green", alpha=0.6,
            label=f"clients' own models (last: {own_y[-1]:.2%})",
        )  # fmt: skip
    for label, color, loss, acc in refs:
        if loss is not None:
            ax_loss.axhline(loss, linestyle="--", color=color, label=f"{label}: {loss:.4f}")
        if acc is not None:
            ax_acc.axhline(acc, linestyle="--", color=color, label=f"{label}: {acc:.2%}")
    ax_loss.set_title("Test loss (lower is better)")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_acc.set_title(f"{unit(summary).capitalize()} accuracy (higher is better)")
    ax_acc.set_ylabel("accuracy")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle("Evaluation on the test split")
    return _save(fig, path)


def plot_efficiency(rows: Sequence[Row], summary: Mapping[str, Any], path: Path) -> Path | None:
    """Two panels: test accuracy against the bytes moved so far (upload, download and the
    evaluation broadcasts) and against the federated time so far, at every evaluated round;
    the centralized baseline dashed. What a round costs is read off the slope."""
    moved = seconds = 0.0
    pts = []
    for r in rows:
        moved += sum(finite(r.get(k)) or 0.0 for k in ("bytes_up", "bytes_down", "eval_bytes_down"))
        seconds += finite(r.get("seconds")) or 0.0
        if (acc := finite(r.get("test_accuracy"))) is not None:
            pts.append((moved, seconds, acc))
    if not pts:
        return None
    name, size = byte_unit(max(p[0] for p in pts))
    fig = Figure(figsize=WIDE_FIGSIZE, dpi=DPI, layout="constrained")
    ax_b, ax_t = fig.subplots(1, 2, sharey=True)
    ax_b.plot([p[0] / size for p in pts], [p[2] for p in pts], marker="o", color=FEDERATED_COLOR)
    ax_t.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", color=FEDERATED_COLOR,
              label=f"federated (last: {pts[-1][2]:.2%})")  # fmt: skip
    for label, color, _, acc in _references(summary)[:1]:
        if acc is not None:
            for ax in (ax_b, ax_t):
                ax.axhline(acc, linestyle="--", color=color, label=f"{label}: {acc:.2%}")
    ax_b.set_xlabel(f"bytes moved so far ({name}: up, down, evaluation)")
    ax_t.set_xlabel("federated time so far (s)")
    ax_b.set_ylabel(f"{unit(summary)} accuracy")
    ax_b.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    for ax in (ax_b, ax_t):
        ax.grid(True, alpha=0.3)
        ax.set_xlim(left=0)
    ax_t.legend(fontsize="small")
    fig.suptitle("Accuracy for the communication and time spent")
    return _save(fig, path)


def _plot_line(
    rows: Sequence[Row], key: str, path: Path, title: str, ylabel: str, label: str
) -> Path | None:
    xs, ys = series(rows, key)
    if not xs:
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.plot(xs, ys, marker="o", color=FEDERATED_COLOR, label=label)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    _round_axis(ax, rows)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_train_loss(rows: Sequence[Row], path: Path) -> Path | None:
    """Mean client training loss per round."""
    return _plot_line(
        rows,
        "train_loss",
        path,
        "Training loss per round",
        "cross-entropy loss",
        "train loss (mean over participants)",
    )


def plot_epsilon(rows: Sequence[Row], path: Path) -> Path | None:
    """Differential-privacy epsilon per round, when the metrics carry it."""
    return _plot_line(
        rows,
        "epsilon",
        path,
        "Differential privacy: epsilon per round",
        "epsilon (ε)",
        "federated ε",
    )


def plot_accuracy_vs_epsilon(rows: Sequence[Row], path: Path) -> Path | None:
    """Test accuracy against the privacy spent so far (evaluated rounds of a private run)."""
    pts = [(finite(r.get("epsilon")), finite(r.get("test_accuracy"))) for r in rows]
    pts = [(e, a) for e, a in pts if e is not None and a is not None]
    if not pts:
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.plot(
        [e for e, _ in pts],
        [a for _, a in pts],
        marker="o",
        color=FEDERATED_COLOR,
        label="federated (evaluated rounds)",
    )
    ax.set_title("Privacy-utility trade-off: accuracy vs epsilon spent")
    ax.set_xlabel("epsilon (ε) spent so far")
    ax.set_ylabel("next-token accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)
