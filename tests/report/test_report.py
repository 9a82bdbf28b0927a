"""Tests for fedgpt.report: a fabricated run folder becomes report.md, report.html and PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedgpt.errors import RunError
from fedgpt.report import load_metrics, write_report
from fedgpt.report.plots import human_bytes
from fedgpt.report.render import fmt_acc, md_escape

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL_CLIENT = "<script>alert(1)</script>"

CONFIG_TEXT = """run_name = "tiny"
[federation]
rounds = 3
clients_per_round = 2
"""

BASELINES: dict[str, Any] = {
    "centralized": {
        "test_loss": 1.5,
        "test_accuracy": 0.5,
        "perplexity": 4.4817,
        "steps": 300,
        "examples_seen": 9600,
        "seconds": 12.5,
    },
    "local_only": {
        "test_loss_mean": 2.6,
        "test_accuracy_mean": 0.3125,
        "test_accuracy_std": 0.05,
        "test_accuracy_min": 0.25,
        "test_accuracy_max": 0.375,
        "perplexity_mean": 13.46,
        "num_clients": 4,
        "sampled": False,
        "steps_mean": 75.0,
        "seconds": 8.0,
        "federated_accuracy_same_clients": 0.44,
        "per_client": [
            {"client": f"c{i}", "test_accuracy": a} for i, a in enumerate((0.25, 0.3, 0.33, 0.375))
        ],
    },
}


def make_run(run_dir: Path, *, baselines: dict[str, Any] | None, epsilon: bool) -> Path:
    """Fabricate a finished 3-round run; round 2 has no evaluation, round 3 drops a client."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "round": 1,
            "train_loss": 3.2,
            "test_loss": 2.9,
            "test_accuracy": 0.2104,
            "perplexity": 18.17,
            "participants": ["c0", "c1"],
            "dropped": [],
            "bytes_up": 2 * 1024 * 1024,
            "bytes_down": 3 * 1024 * 1024,
            "seconds": 4.2,
            "future_key": {"ignored": True},
        },
        {
            "round": 2,
            "train_loss": 2.7,
            "test_loss": None,
            "test_accuracy": None,
            "perplexity": None,
            "participants": ["c2", EVIL_CLIENT],
            "dropped": [],
            "bytes_up": 2 * 1024 * 1024,
            "bytes_down": 3 * 1024 * 1024,
            "seconds": 3.9,
        },
        {
            "round": 3,
            "train_loss": 2.4,
            "test_loss": 2.2,
            "test_accuracy": 0.4567,
            "perplexity": 9.03,
            "participants": ["c1"],
            "dropped": [{"client": EVIL_CLIENT, "reason": "timeout after 30 s & <gone>"}],
            "bytes_up": 1024 * 1024,
            "bytes_down": 3 * 1024 * 1024,
            "seconds": 5.0,
        },
    ]
    if epsilon:
        for row, eps in zip(rows, (0.8, 1.3, 1.7), strict=True):
            row["epsilon"] = eps
    with (run_dir / "metrics.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    summary = {
        "run_name": "tiny <run>",
        "rounds": 3,
        "model": {
            "name": "tiny-gpt",
            "trainable_params": 12_288,
            "total_params": 1_000_000,
            "lora": True,
        },
        "dataset": {
            "num_clients": 4,
            "train_chars": 40_000,
            "test_chars": 4_000,
            "chars_min": 5_000,
            "chars_median": 9_500.0,
            "chars_max": 16_000,
            "gini": 0.21,
            "source": "shakespeare",
        },
        "federated": {"test_loss": 2.2, "test_accuracy": 0.4567, "perplexity": 9.03},
        "federated_per_client": {
            f"c{i}": {"loss": 2.2, "accuracy": a, "count": 100}
            for i, a in enumerate((0.41, 0.44, 0.47, 0.52))
        },
        "baselines": baselines,
        "samples": [{"prompt": "To be", "text": "To be <or> not ```to``` be"}],
        "time": {
            "federation": 10.0,
            "evaluation": 1.1,
            "samples": 0.5,
            "baselines": 1.0,
            "other": 0.5,
        },
        "seconds": 13.1,
        "config_path": "config.toml",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (run_dir / "config.toml").write_text(CONFIG_TEXT, encoding="utf-8")
    return run_dir


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert len(data) > 1000
    assert data.startswith(PNG_MAGIC)


@pytest.mark.parametrize("epsilon", [True, False])
def test_report_with_baselines(tmp_path: Path, epsilon: bool) -> None:
    run = make_run(tmp_path / "run", baselines=BASELINES, epsilon=epsilon)
    md_path, html_path = write_report(run)

    assert md_path == run / "report.md" and md_path.is_file()
    assert html_path == run / "report.html" and html_path.is_file()
    for name in ("evaluation", "train_loss", "efficiency", "clients"):
        assert_png(run / "plots" / f"{name}.png")
    assert (run / "plots" / "epsilon.png").exists() is epsilon

    md = md_path.read_text(encoding="utf-8")
    # Measured accuracies, formatted, and the federated/centralized ratio 0.4567 / 0.5.
    for text in ("45.67%", "50.00%", "31.25%", "44.00%", "0.913"):
        assert text in md, text
    assert "ratio is 0.913" in md
    assert "(plots/evaluation.png)" in md and "(plots/efficiency.png)" in md
    # where the time went: each part with its share of the 13.1 s
    assert "| federated rounds (training, exchange, aggregation) | 10.0 s | 76.3% |" in md
    assert "| baselines (centralized, local-only) | 1.0 s | 7.6% |" in md
    # the sample, verbatim in a fence longer than any run of backticks in it
    assert "````\nTo be <or> not ```to``` be\n````" in md
    assert ("(plots/epsilon.png)" in md) is epsilon
    assert "```toml\n" + CONFIG_TEXT + "```" in md
    assert "9,600 examples" in md
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "timeout after 30 s" in md

    page = html_path.read_text(encoding="utf-8")
    # with epsilon: + epsilon per round, accuracy vs epsilon
    assert page.count("data:image/png;base64,") == (6 if epsilon else 4)
    assert "To be &lt;or&gt; not" in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&amp; &lt;gone&gt;" in page
    assert "<details>" in page and "clients_per_round = 2" in page
    assert "tiny &lt;run&gt;" in page
    assert "http://" not in page and "https://" not in page


def test_report_without_baselines(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", baselines=None, epsilon=False)
    md_path, html_path = write_report(str(run))

    md = md_path.read_text(encoding="utf-8")
    assert "45.67%" in md
    assert "No baselines were run" in md
    assert "| centralized |" not in md
    assert_png(run / "plots" / "evaluation.png")
    assert "data:image/png;base64," in html_path.read_text(encoding="utf-8")


def test_partial_baselines(tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "run",
        baselines={"centralized": None, "local_only": BASELINES["local_only"]},
        epsilon=False,
    )
    md = write_report(run)[0].read_text(encoding="utf-8")
    assert "31.25%" in md
    assert "ratio is" not in md


def test_rerun_removes_stale_plots(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", baselines=BASELINES, epsilon=True)
    write_report(run)
    assert (run / "plots" / "epsilon.png").exists()
    make_run(run, baselines=BASELINES, epsilon=False)
    write_report(run)
    assert not (run / "plots" / "epsilon.png").exists()


def test_missing_summary_raises(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", baselines=None, epsilon=False)
    (run / "summary.json").unlink()
    with pytest.raises(RunError, match="summary.json"):
        write_report(run)


def test_missing_run_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="nope"):
        write_report(tmp_path / "nope")


def test_malformed_metrics_line_raises(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", baselines=None, epsilon=False)
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    with pytest.raises(RunError, match=r"metrics\.jsonl:4"):
        write_report(run)


def test_resumed_rounds_keep_last_record(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"round": 2, "train_loss": 1.0}\n\n{"round": 1}\n{"round": 2, "train_loss": 0.5}\n',
        encoding="utf-8",
    )
    rows = load_metrics(path)
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] == 0.5


def test_formatting_helpers() -> None:
    assert fmt_acc(0.4567) == "45.67%"
    assert fmt_acc(None) == "—"
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.50 KiB"
    assert human_bytes(3 * 1024**3) == "3.00 GiB"
    assert md_escape("a|b <x> *y*") == r"a\|b &lt;x&gt; \*y\*"


def test_a_diverging_run_is_flagged():
    from fedgpt.report.render import diverged

    ok = [{"train_loss": 3.0, "test_loss": 3.0}, {"train_loss": 2.5, "test_loss": 2.6}]
    assert diverged(ok) is None
    up = [*ok, {"train_loss": 2.0, "test_loss": 4.6}]
    assert diverged(up) == "test loss rose from 3.0000 to 4.6000"
    assert diverged([{"train_loss": float("nan"), "test_loss": None}]) == (
        "a training loss is not finite"
    )
