"""Markdown and HTML rendering of a FedGPT run report.

The report is first assembled as a list of plain-text blocks (:class:`Heading`,
:class:`Paragraph`, :class:`Table`, :class:`Image`, :class:`Code`) by :func:`build_report`;
:func:`render_markdown` and :func:`render_html` then turn the same blocks into either format.
Blocks hold unescaped text, and each renderer escapes everything it emits, so run names,
client ids and drop reasons can never inject markup.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgpt.federation.state import count
from fedgpt.report.plots import Row, as_float, finite, human_bytes, nested, unit

MISSING = "—"


@dataclass(frozen=True)
class Heading:
    """A section heading; level 1 is the report title."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table; ``align`` has one character per column, ``"l"`` or ``"r"``."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    align: str


@dataclass(frozen=True)
class Image:
    """A PNG plot: ``path`` on disk, ``link`` relative to the report, ``caption`` as alt text."""

    path: Path
    link: str
    caption: str


@dataclass(frozen=True)
class Code:
    """A verbatim text block (collapsible in HTML)."""

    text: str
    title: str
    language: str = ""


Block = Heading | Paragraph | Table | Image | Code


# ----------------------------------------------------------------------------- formatting


def _fmt(value: Any, spec: str) -> str:
    number = as_float(value)
    if number is None:
        return MISSING
    return format(number, spec) if math.isfinite(number) else str(number)


def fmt_loss(value: Any) -> str:
    """Loss with four decimals."""
    return _fmt(value, ".4f")


def fmt_ppl(value: Any) -> str:
    """Perplexity with two decimals and thousands separators."""
    return _fmt(value, ",.2f")


def fmt_acc(value: Any) -> str:
    """Accuracy in [0, 1] as a percentage with two decimals, e.g. ``45.67%``."""
    return _fmt(value, ".2%")


def fmt_int(value: Any) -> str:
    """Integer with thousands separators."""
    number = finite(value)
    return MISSING if number is None else f"{round(number):,}"


def fmt_seconds(value: Any) -> str:
    """Duration in seconds as ``12.3 s``, ``4 min 05 s`` or ``2 h 07 min``."""
    seconds = finite(value)
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def ratio(numerator: Any, denominator: Any) -> float | None:
    """``numerator / denominator`` when both are finite and the denominator is not zero."""
    top, bottom = finite(numerator), finite(denominator)
    if top is None or bottom is None or bottom == 0:
        return None
    return top / bottom


def fmt_ratio(value: float | None) -> str:
    """A ratio with three decimals."""
    return MISSING if value is None else f"{value:.3f}"


# ----------------------------------------------------------------------------- content


def _federated(rows: Sequence[Row], summary: Mapping[str, Any]) -> dict[str, Any]:
    """Final federated metrics: from ``summary.json``, else the last evaluated round."""
    result = dict(nested(summary, "federated") or {})
    evaluated = [r for r in rows if finite(r.get("test_accuracy")) is not None]
    last = evaluated[-1] if evaluated else {}
    for key in ("test_loss", "test_accuracy", "perplexity"):
        if as_float(result.get(key)) is None:
            result[key] = last.get(key)
    return result


def _summary_paragraph(rows: Sequence[Row], summary: Mapping[str, Any]) -> str:
    fed = _federated(rows, summary)
    rounds = summary.get("rounds", len(rows))
    clients = nested(summary, "dataset", "num_clients")
    with_clients = f" with {fmt_int(clients)} clients" if finite(clients) is not None else ""
    parts = [
        f"After {fmt_int(rounds)} rounds{with_clients}, the federated model reaches a "
        f"{unit(summary)} test accuracy of {fmt_acc(fed.get('test_accuracy'))} (test loss "
        f"{fmt_loss(fed.get('test_loss'))}, perplexity {fmt_ppl(fed.get('perplexity'))})."
    ]
    central = nested(summary, "baselines", "centralized")
    if isinstance(central, Mapping):
        parts.append(
            f"Centralized training on the pooled data reaches "
            f"{fmt_acc(central.get('test_accuracy'))} (test loss "
            f"{fmt_loss(central.get('test_loss'))}), so the federated/centralized accuracy "
            f"ratio is {fmt_ratio(ratio(fed.get('test_accuracy'), central.get('test_accuracy')))}."
        )
    local = nested(summary, "baselines", "local_only")
    if isinstance(local, Mapping):
        sampled = "sampled " if local.get("sampled") else ""
        text = (
            f"Training each client only on its own data reaches a mean accuracy of "
            f"{fmt_acc(local.get('test_accuracy_mean'))} (std "
            f"{fmt_acc(local.get('test_accuracy_std'))}, range "
            f"{fmt_acc(local.get('test_accuracy_min'))} to "
            f"{fmt_acc(local.get('test_accuracy_max'))} over "
            f"{fmt_int(local.get('num_clients'))} {sampled}clients)"
        )
        same = local.get("federated_accuracy_same_clients")
        if finite(same) is not None:
            text += f"; the federated model scores {fmt_acc(same)} on those same clients"
        parts.append(text + ".")
    if not isinstance(central, Mapping) and not isinstance(local, Mapping):
        parts.append("No baselines were run, so there is no centralized or local-only reference.")
    privacy = nested(summary, "privacy")
    if isinstance(privacy, Mapping):
        parts.append(
            f"Differential privacy ({privacy.get('mode')}): "
            f"ε = {_fmt(privacy.get('epsilon'), '.4g')} "
            f"at δ = {_fmt(privacy.get('delta'), 'g')} (noise multiplier "
            f"{_fmt(privacy.get('noise_multiplier'), '.4g')}, {privacy.get('accountant')} "
            "accountant)."
        )
    if summary.get("stopped"):
        parts.append(f"The run stopped early: {summary['stopped']}.")
    resumed = summary.get("resumed_after") or []
    if resumed:
        after = ", ".join(str(r) for r in resumed)
        parts.append(
            f"The run was resumed {len(resumed)} time(s), after round(s) {after}: its wall "
            "time counts only the last part, its federated time every round."
        )
    if (why := diverged(rows)) is not None:
        parts.append(f"**Warning: training diverged** ({why}).")
    fp = nested(summary, "ledger", "public_key_fingerprint")
    if isinstance(fp, str):
        parts.append(
            f"The ledger is signed by the key with fingerprint {fp} (check it with "
            "`fedgpt verify RUN --fingerprint` and a copy of the fingerprint kept apart)."
        )
    return " ".join(parts)


def diverged(rows: Sequence[Row]) -> str | None:
    """Why the training looks diverged (a non-finite loss, or a last test loss 1.5 x the
    first one), or None."""
    train = [r.get("train_loss") for r in rows if isinstance(r.get("train_loss"), int | float)]
    if any(not math.isfinite(x) for x in train):
        return "a training loss is not finite"
    test = [r["test_loss"] for r in rows if isinstance(r.get("test_loss"), int | float)]
    if len(test) >= 2 and math.isfinite(test[0]) and test[-1] > 1.5 * test[0]:
        return f"test loss rose from {test[0]:.4f} to {test[-1]:.4f}"
    return None


def _run_table(rows: Sequence[Row], summary: Mapping[str, Any]) -> Table:
    model = nested(summary, "model") or {}
    trainable, total = model.get("trainable_params"), model.get("total_params")
    share = ratio(trainable, total)
    params = f"{fmt_int(trainable)} of {fmt_int(total)}"
    if share is not None:
        params += f" ({share:.2%})"
    lora = model.get("lora")
    entries = [
        ("model", str(model.get("name", MISSING))),
        ("LoRA", MISSING if lora is None else ("yes" if lora else "no")),
        ("trainable parameters", params),
        ("rounds", fmt_int(summary.get("rounds", len(rows)))),
        ("wall time", fmt_seconds(summary.get("seconds"))),
        ("total upload", human_bytes(sum(finite(r.get("bytes_up")) or 0 for r in rows))),
        ("total download", human_bytes(sum(finite(r.get("bytes_down")) or 0 for r in rows))),
    ]
    return Table(("", "value"), entries, "ll")


def _comparison_table(rows: Sequence[Row], summary: Mapping[str, Any]) -> Table:
    fed = _federated(rows, summary)
    central = nested(summary, "baselines", "centralized")
    local = nested(summary, "baselines", "local_only")
    central_acc = central.get("test_accuracy") if isinstance(central, Mapping) else None
    updates = sum(count(r.get("participants")) for r in rows)
    auc = fed.get("test_auc") is not None  # classification: AUC where perplexity was

    def mid(d: Mapping[str, Any], suffix: str = "") -> str:
        if not auc:
            return fmt_ppl(d.get("perplexity" + suffix))
        ci = d.get("test_auc_ci")  # the pooled AUC's 95 % bootstrap interval
        span = f" ({ci[0]:.3f}–{ci[1]:.3f})" if isinstance(ci, list) and len(ci) == 2 else ""
        return _fmt(d.get("test_auc" + suffix), ".4f") + span

    table_rows = [
        [
            "federated",
            fmt_loss(fed.get("test_loss")),
            mid(fed),
            fmt_acc(fed.get("test_accuracy")),
            fmt_ratio(ratio(fed.get("test_accuracy"), central_acc)),
            f"{fmt_int(summary.get('rounds', len(rows)))} rounds, {updates:,} client updates",
            fmt_seconds(summary.get("federated_seconds", summary.get("seconds"))),
        ]
    ]
    if isinstance(central, Mapping):
        table_rows.append(
            [
                "centralized",
                fmt_loss(central.get("test_loss")),
                mid(central),
                fmt_acc(central_acc),
                fmt_ratio(ratio(central_acc, central_acc)),
                f"{fmt_int(central.get('steps'))} steps, "
                f"{fmt_int(central.get('examples_seen'))} examples",
                fmt_seconds(central.get("seconds")),
            ]
        )
    if isinstance(local, Mapping):
        mean = local.get("test_accuracy_mean")
        table_rows.append(
            [
                f"local-only (mean of {fmt_int(local.get('num_clients'))}"
                f"{' sampled' if local.get('sampled') else ''} clients)",
                fmt_loss(local.get("test_loss_mean")),
                mid(local, "_mean"),
                f"{fmt_acc(mean)} ± {fmt_acc(local.get('test_accuracy_std'))}",
                fmt_ratio(ratio(mean, central_acc)),
                f"{fmt_int(local.get('steps_mean'))} steps per client (mean)",
                fmt_seconds(local.get("seconds")),
            ]
        )
    header = (
        "method",
        "test loss",
        "AUC (95 % interval)" if auc else "perplexity",
        f"{unit(summary)} accuracy",
        "ratio to centralized",
        "training examples/steps",
        "time",
    )
    return Table(header, table_rows, "lrrrrll")


DATASET_LABELS = {
    "num_clients": "clients",
    "train_chars": "training characters",
    "test_chars": "test characters",
    "chars_min": "characters per client (min)",
    "chars_median": "characters per client (median)",
    "chars_max": "characters per client (max)",
    "gini": "Gini coefficient of client sizes",
    "chars_mean": "characters per client (mean)",
    "top10_share": "share of characters held by the largest 10 % of clients",
    "cv": "coefficient of variation of client sizes",
}


def _dataset_table(summary: Mapping[str, Any]) -> Table | None:
    dataset = nested(summary, "dataset")
    if not isinstance(dataset, Mapping) or not dataset:
        return None
    keys = [k for k in DATASET_LABELS if k in dataset]
    keys += [k for k in dataset if k not in DATASET_LABELS]
    entries = []
    for key in keys:
        value = dataset[key]
        if key in ("gini", "top10_share", "cv"):
            text = _fmt(value, ".3f")
        elif isinstance(value, int) and not isinstance(value, bool):
            text = f"{value:,}"
        elif isinstance(value, float):
            text = f"{value:,.1f}" if key == "chars_median" else f"{value:g}"
        else:
            text = str(value)
        entries.append((DATASET_LABELS.get(key, key), text))
    return Table(("", "value"), entries, "lr")


def _rounds_table(rows: Sequence[Row]) -> Table:
    with_epsilon = any("epsilon" in r for r in rows)
    header = [
        "round",
        "train loss",
        "test loss",
        "accuracy",
        "participants",
        "dropped",
        "bytes up",
        "bytes down",
        "seconds",
    ] + (["epsilon"] if with_epsilon else [])
    body = []
    for r in rows:
        line = [
            str(r["round"]),
            fmt_loss(r.get("train_loss")),
            fmt_loss(r.get("test_loss")),
            fmt_acc(r.get("test_accuracy")),
            str(count(r.get("participants"))),
            str(len(r.get("dropped") or [])),
            human_bytes(r.get("bytes_up")),
            human_bytes(r.get("bytes_down")),
            _fmt(r.get("seconds"), ".1f"),
        ]
        body.append(line + ([_fmt(r.get("epsilon"), ".3f")] if with_epsilon else []))
    return Table(header, body, "r" * len(header))


TIME_PARTS = {
    "federation": "federated rounds (training, exchange, aggregation)",
    "evaluation": "evaluation of the global model",
    "samples": "sample generations",
    "baselines": "baselines (centralized, local-only)",
    "other": "preparing data and model, saving",
}


def _time_table(summary: Mapping[str, Any]) -> Table | None:
    """Seconds and share of each part of the run (``summary["time"]``)."""
    times = summary.get("time")
    if not isinstance(times, Mapping):
        return None
    parts = [(k, finite(times.get(k))) for k in TIME_PARTS]
    parts = [(k, v) for k, v in parts if v is not None]
    total = sum(v for _, v in parts)
    if not parts or total <= 0:
        return None
    body = [(TIME_PARTS[k], fmt_seconds(v), f"{v / total:.1%}") for k, v in parts]
    body.append(("total", fmt_seconds(total), "100.0%"))
    return Table(("part", "time", "share"), body, "lrr")


def _site_table(summary: Mapping[str, Any]) -> Table | None:
    """Each site's test records and the final model's accuracy, AUC and calibration on
    them, beside the site's own local-only model (classification runs)."""
    per = summary.get("federated_per_client") or {}
    if not per or not any(isinstance(v, Mapping) and "auc" in v for v in per.values()):
        return None
    local = nested(summary, "baselines", "local_only", "per_client") or []
    own = {c.get("client"): c for c in local if isinstance(c, Mapping)}
    body = []
    for cid in sorted(per):
        v, o = per[cid], own.get(cid, {})
        body.append((cid, fmt_int(v.get("count")), fmt_acc(v.get("accuracy")),
                     _fmt(v.get("auc"), ".3f"), _fmt(v.get("ece"), ".3f"),
                     _fmt(o.get("test_auc"), ".3f")))  # fmt: skip
    header = ("site", "test records", "accuracy", "AUC", "ECE", "local-only AUC")
    return Table(header, body, "lrrrrr")


def _sample_blocks(summary: Mapping[str, Any]) -> list[Block]:
    """The final model's continuations of the configured prompts (``report.prompts``)."""
    samples = [s for s in summary.get("samples") or [] if isinstance(s, Mapping)]
    if not samples:
        return []
    blocks: list[Block] = [
        Heading("Sample generations"),
        Paragraph(
            "The final model continues each prompt of report.prompts (sampled at the "
            "configured temperature, seeded by the run's seed)."
        ),
    ]
    for i, s in enumerate(samples, 1):
        blocks.append(Code(str(s.get("text", "")), f"Sample {i}: {s.get('prompt', '')!r}"))
    return blocks


def _dropped_blocks(rows: Sequence[Row]) -> list[Block]:
    dropped = []
    for r in rows:
        for entry in r.get("dropped") or []:
            if isinstance(entry, Mapping):
                client, reason = entry.get("client", MISSING), entry.get("reason", MISSING)
            else:
                client, reason = entry, MISSING
            dropped.append((str(r["round"]), str(client), str(reason)))
    if not dropped:
        return [Paragraph("No client was dropped.")]
    return [Table(("round", "client", "reason"), dropped, "rll")]


def build_report(
    run_dir: Path,
    rows: Sequence[Row],
    summary: Mapping[str, Any],
    config_text: str | None,
    plots: Mapping[str, Path],
) -> list[Block]:
    """Assemble the report blocks for one run folder."""
    run_name = str(summary.get("run_name") or Path(run_dir).name)
    captions = {
        "evaluation": f"Test loss and {unit(summary)} accuracy per round",
        "train_loss": "Training loss per round",
        "efficiency": "Test accuracy against the bytes moved and the federated time spent",
        "clients": "How the final model serves each client, beside their local-only models",
        "sites": "AUC per site of the final model and of each site's local-only model",
        "epsilon": "Differential-privacy epsilon per round",
        "accuracy_vs_epsilon": "Test accuracy against epsilon spent",
        "heterogeneity": "Which clients pull away from the aggregate (spread, top clients)",
        "attention": "FedAtt attention weight of the clients (spread per round, top clients)",
    }
    blocks: list[Block] = [
        Heading(f"FedGPT run report: {run_name}", 1),
        Paragraph(_summary_paragraph(rows, summary)),
        Heading("Run"),
        _run_table(rows, summary),
        Heading("Comparison"),
        _comparison_table(rows, summary),
    ]
    if (times := _time_table(summary)) is not None:
        blocks += [Heading("Where the time went"), times]
    if plots:
        blocks.append(Heading("Plots"))
        for name, path in plots.items():
            link = Path(path).relative_to(run_dir).as_posix()
            blocks.append(Image(Path(path), link, captions.get(name, name)))
    blocks += _sample_blocks(summary)
    if (sites := _site_table(summary)) is not None:
        blocks += [Heading("Per site"), sites]
    dataset = _dataset_table(summary)
    if dataset is not None:
        blocks += [Heading("Dataset"), dataset]
    blocks += [Heading("Rounds"), _rounds_table(rows), Heading("Dropped clients")]
    blocks += _dropped_blocks(rows)
    config_name = str(summary.get("config_path") or "config.toml")
    blocks.append(Heading("Configuration"))
    if config_text is None:
        blocks.append(Paragraph(f"The configuration file {config_name} was not found."))
    else:
        blocks.append(Code(config_text, f"Resolved configuration ({config_name})", "toml"))
    return blocks


# ----------------------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def md_escape(text: str) -> str:
    """Escape Markdown syntax and raw-HTML characters in one line of text."""
    text = _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_markdown(blocks: Sequence[Block]) -> str:
    """Render blocks as GitHub-flavoured Markdown."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {md_escape(block.text)}")
        elif isinstance(block, Paragraph):
            out.append(md_escape(block.text))
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(md_escape(h) for h in block.header) + " |"]
            lines.append("|" + "|".join(":--" if a == "l" else "--:" for a in block.align) + "|")
            lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in block.rows]
            out.append("\n".join(lines))
        elif isinstance(block, Image):
            out.append(f"![{md_escape(block.caption)}]({block.link})")
        elif isinstance(block, Code):
            longest = max((len(m) for m in re.findall(r"`+", block.text)), default=0)
            fence = "`" * max(3, longest + 1)
            body = block.text if block.text.endswith("\n") else block.text + "\n"
            out.append(f"{md_escape(block.title)}:\n\n{fence}{block.language}\n{body}{fence}")
    return "\n\n".join(out) + "\n"


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2328;
background:#fff;line-height:1.5}
main{max-width:1040px;margin:0 auto;padding:1.5rem}
h1{font-size:1.6rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #eaeef2;padding-bottom:.2rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafbfc}
figure{margin:1rem 0}
img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{font-size:.85rem;color:#57606a}
pre{background:#f6f8fa;padding:.75rem;overflow-x:auto;font-size:.85rem}
summary{cursor:pointer;font-weight:600}
"""


def _html_table(table: Table) -> str:
    esc = html.escape
    head = "".join(
        f'<th class="{a}">{esc(h)}</th>' for h, a in zip(table.header, table.align, strict=True)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{a}">{esc(c)}</td>' for c, a in zip(row, table.align, strict=True))
        + "</tr>"
        for row in table.rows
    )
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def render_html(blocks: Sequence[Block]) -> str:
    """Render blocks as one self-contained HTML page (images inlined as data URIs)."""
    esc = html.escape
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "FedGPT")
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Table):
            out.append(_html_table(block))
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block.caption)}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, Code):
            out.append(
                f"<details><summary>{esc(block.title)}</summary>"
                f"<pre><code>{esc(block.text)}</code></pre></details>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(out)
        + "\n</main>\n</body>\n</html>\n"
    )
