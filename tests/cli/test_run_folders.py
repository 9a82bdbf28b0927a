"""A run folder is never overwritten by accident, and the run name stays inside out_dir."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedgpt.cli.main import app
from fedgpt.config import load_config
from fedgpt.errors import ConfigError, RunError
from fedgpt.experiment import run_experiment


def test_out_on_an_existing_run_is_refused_and_the_run_kept(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "federation.rounds=1", "baselines.enabled=false"])
    run = tmp_path / "r"
    run_experiment(cfg, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(RunError, match="holds a run already: continue it with --resume"):
        run_experiment(cfg, run)
    out = CliRunner().invoke(app, ["run", "--out", str(run), *sum((["--set", o] for o in
                                   [*tiny_overrides, "federation.rounds=1"]), [])])  # fmt: skip
    assert out.exit_code == 2 and "--resume" in out.output and out.output.count("\n") == 1
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_out_naming_a_file_is_refused(tiny_overrides, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    cfg = load_config(None, tiny_overrides)
    with pytest.raises(RunError, match="is a file, not a run folder"):
        run_experiment(cfg, f)
    assert f.read_text() == "mine"


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "x\x00y", "", "a" * 101])
def test_run_names_stay_inside_out_dir(name):
    with pytest.raises(ConfigError, match="name"):
        load_config(None, [f"name={name!r}".replace("'", '"') if "\x00" not in name else
                           'name="x\\u0000y"'])  # fmt: skip


def test_resuming_a_finished_run_says_so_and_changes_nothing(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "federation.rounds=1", "baselines.enabled=false"])
    run = tmp_path / "r"
    run_experiment(cfg, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    out = CliRunner().invoke(app, ["run", "--resume", str(run)])
    assert out.exit_code == 0 and "finished all 1 rounds, nothing to resume" in out.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_ctrl_c_says_how_to_resume(tiny_overrides, tmp_path, monkeypatch):
    import fedgpt.experiment

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedgpt.experiment, "run_experiment", interrupted)
    sets = sum((["--set", o] for o in tiny_overrides), [])
    out = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "r"), *sets])
    assert out.exit_code == 130
    assert (
        f"interrupted after round 0 (saved): continue with fedgpt run --resume {tmp_path / 'r'}"
        in out.output
    )
