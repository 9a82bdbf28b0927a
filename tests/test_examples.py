"""The configurations in examples/ are valid and name what they need: a pulled model, a
data source that ships with FedGPT, a task that reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgpt.config import load_config
from fedgpt.config.paths import is_pulled_name
from fedgpt.models.catalogue import PULLABLE

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.toml"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_loads_and_names_a_pulled_model(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    if cfg.model.path:
        assert is_pulled_name(cfg.model.path) and cfg.model.path in PULLABLE
    text = path.read_text()
    assert f"fedgpt run -c examples/{path.name}" in text
    if cfg.data.source == "pima":
        assert cfg.task.kind in ("classification", "tabular")


def test_the_classical_example_runs_end_to_end(tmp_path):
    from fedgpt.experiment import run_experiment

    path = Path(__file__).parents[1] / "examples" / "diabetes-logistic.toml"
    summary = run_experiment(load_config(path), tmp_path / "run")
    assert summary["rounds"] == 30
    assert summary["federated"]["test_auc"] > 0.88
    assert (tmp_path / "run" / "report.html").is_file()
