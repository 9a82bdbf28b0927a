"""Run reports: turn a finished FedGPT run folder into ``report.md`` and ``report.html``.

A run folder holds ``metrics.jsonl`` (one JSON object per round), ``summary.json`` and the
resolved ``config.toml``. :func:`write_report` reads them, draws the plots into
``<run>/plots/`` and writes a Markdown report (linking the plots relatively) and a
self-contained HTML report (plots embedded as data URIs) next to them::

    from fedgpt.report import write_report

    md_path, html_path = write_report("runs/shakespeare")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedgpt.errors import RunError
from fedgpt.files import write_atomic
from fedgpt.report.figures import make_plots
from fedgpt.report.render import build_report, render_html, render_markdown

__all__ = ["load_metrics", "load_summary", "write_report"]

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PLOTS_DIR = "plots"


def load_summary(path: Path) -> dict[str, Any]:
    """Read ``summary.json``; raise :class:`RunError` naming the file if absent or malformed."""
    if not path.is_file():
        raise RunError(f"{path}: run summary not found; is this a finished run folder?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: cannot read run summary: {exc}") from exc
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_metrics(path: Path) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl`` into rows sorted by round.

    Blank lines are skipped; if a round appears more than once (a resumed run), the last
    record wins. Each record must be a JSON object with an integer ``round``; anything else
    raises :class:`RunError` naming the file and line. Unknown keys are kept and ignored.
    """
    if not path.is_file():
        raise RunError(f"{path}: per-round metrics not found; is this a finished run folder?")
    by_round: dict[int, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: cannot read metrics: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunError(f"{path}:{number}: invalid JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise RunError(f"{path}:{number}: expected a JSON object per line")
        round_ = row.get("round")
        if isinstance(round_, bool) or not isinstance(round_, int):
            raise RunError(f"{path}:{number}: 'round' must be an integer, got {round_!r}")
        by_round[round_] = row
    return [by_round[r] for r in sorted(by_round)]


def _load_config(run_dir: Path, summary: dict[str, Any]) -> str | None:
    """The resolved configuration text, or ``None`` when the file is absent."""
    config_path = Path(str(summary.get("config_path") or "config.toml"))
    if not config_path.is_absolute():
        config_path = run_dir / config_path
    try:
        return config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{config_path}: cannot read configuration: {exc}") from exc


def write_report(run_dir: Path | str) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``run_dir``.

    Returns the Markdown and HTML paths. Raises :class:`RunError` when the folder, its
    ``summary.json`` or its ``metrics.jsonl`` is missing or malformed. Baselines absent from
    the summary are simply left out of the report.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run folder not found")
    summary = load_summary(run_dir / SUMMARY_FILE)
    rows = load_metrics(run_dir / METRICS_FILE)
    config_text = _load_config(run_dir, summary)
    plots = make_plots(rows, summary, run_dir / PLOTS_DIR)
    blocks = build_report(run_dir, rows, summary, config_text, plots)
    md_path = run_dir / "report.md"
    html_path = run_dir / "report.html"
    write_atomic(md_path, render_markdown(blocks))
    write_atomic(html_path, render_html(blocks))
    return md_path, html_path
