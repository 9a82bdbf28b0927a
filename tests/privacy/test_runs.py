"""Private runs end to end on the tiny model: epsilon reported per round, budget stops,
calibration, local DP hiding losses, resume exact with DP state, the privacy CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedgpt.cli.main import app
from fedgpt.config import load_config
from fedgpt.experiment import Hooks, run_experiment
from fedgpt.privacy.accountant import epsilon

runner = CliRunner()


def cfg_with(tiny_overrides, *extra):
    return load_config(
        None,
        [*tiny_overrides, "baselines.enabled=false", "privacy.reproducible_noise=true", *extra],
    )


def rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_central_dp_reports_epsilon_of_the_subsampled_gaussian(tiny_overrides, tmp_path):
    cfg = cfg_with(
        tiny_overrides,
        'privacy.mode="central_dp"',
        "privacy.noise_multiplier=1.1",
        "federation.rounds=3",
    )
    s = run_experiment(cfg, tmp_path / "r")
    r = rows(tmp_path / "r")
    q = 2 / s["dataset"]["num_clients"]
    assert [x["epsilon"] for x in r] == pytest.approx([epsilon(1.1, q, t, 1e-5) for t in (1, 2, 3)])
    assert s["privacy"]["epsilon"] == pytest.approx(r[-1]["epsilon"])


def test_calibrated_noise_spends_the_target_and_budget_stops_cleanly(tiny_overrides, tmp_path):
    cfg = cfg_with(
        tiny_overrides,
        'privacy.mode="central_dp"',
        "privacy.noise_multiplier=0",
        "privacy.target_epsilon=5",
        "federation.rounds=3",
    )
    run_experiment(cfg, tmp_path / "cal")
    eps = [x["epsilon"] for x in rows(tmp_path / "cal")]
    assert len(eps) == 3 and eps[-1] <= 5.0 and eps[-1] == pytest.approx(5.0, rel=1e-2)
    # a fixed z with a small budget: the run stops before exceeding it, outputs complete
    # (z = 2, q = 2/11: epsilon 1.0857 after 3 rounds, 1.1951 after 4)
    cfg = cfg_with(
        tiny_overrides,
        'privacy.mode="central_dp"',
        "privacy.noise_multiplier=2",
        "privacy.target_epsilon=1.1",
        "federation.rounds=50",
    )
    s = run_experiment(cfg, tmp_path / "stop")
    r = rows(tmp_path / "stop")
    assert s["dataset"]["num_clients"] == 11
    assert s["stopped"] and "privacy budget" in s["stopped"] and len(r) == 3
    assert r[-1]["epsilon"] <= 1.1 and (tmp_path / "stop/model/config.json").is_file()


def test_local_dp_sends_no_losses_and_clients_stop_at_their_budget(tiny_overrides, tmp_path):
    # z = 4: per-client epsilon 2.166, 3.189, 4.011 after 1, 2, 3 releases
    cfg = cfg_with(
        tiny_overrides,
        'privacy.mode="local_dp"',
        "privacy.noise_multiplier=4.0",
        "privacy.target_epsilon=4",
        "federation.rounds=6",
        "federation.fraction=1.0",
    )
    run_experiment(cfg, tmp_path / "l")
    r = rows(tmp_path / "l")
    assert r[0]["train_loss"] is None and r[0]["epsilon"] > 0
    reasons = {d["reason"] for x in r for d in x["dropped"]}
    assert "privacy budget exhausted" in reasons
    assert max(x["epsilon"] for x in r) == pytest.approx(3.189, abs=1e-3)


class StopAt(Hooks):
    def round_done(self, row):
        if row["round"] == 2:
            raise KeyboardInterrupt


def test_resume_with_adaptive_clipping_is_exact(tiny_overrides, tmp_path):
    cfg = cfg_with(
        tiny_overrides,
        'privacy.mode="central_dp"',
        "privacy.noise_multiplier=0.3",
        "privacy.adaptive_clipping=true",
        "privacy.count_noise_std=1.0",
        "federation.rounds=3",
    )
    run_experiment(cfg, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "cut", hooks=StopAt())
    run_experiment(cfg, tmp_path / "cut", resume=True)
    a = load_file(tmp_path / "full/model/model.safetensors")
    b = load_file(tmp_path / "cut/model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = rows(tmp_path / "full"), rows(tmp_path / "cut")
    assert [x["clip_norm"] for x in ra] == [x["clip_norm"] for x in rb]
    assert len({x["clip_norm"] for x in ra}) > 1  # the clip adapts
    assert [x["epsilon"] for x in ra] == [x["epsilon"] for x in rb]


def test_privacy_cli(tiny_overrides, tmp_path):
    res = runner.invoke(
        app,
        [
            "privacy",
            "epsilon",
            "--noise-multiplier",
            "1.5",
            "--sample-rate",
            "0.04",
            "--steps",
            "2250",
            "--delta",
            "1e-5",
        ],
    )
    assert res.exit_code == 0 and float(res.output.strip().splitlines()[-1]) == pytest.approx(
        7.3291, rel=1e-3
    )
    assert "not an accountant" in res.output
    res = runner.invoke(
        app,
        [
            "privacy",
            "plan",
            "--target-epsilon",
            "7.3291",
            "--sample-rate",
            "0.04",
            "--steps",
            "2250",
            "--delta",
            "1e-5",
        ],
    )
    assert float(res.output.strip().splitlines()[-1]) == pytest.approx(1.5, rel=1e-3)
    res = runner.invoke(
        app,
        [
            "privacy",
            "epsilon",
            "--noise-multiplier",
            "1",
            "--sample-rate",
            "0.1",
            "--steps",
            "3",
            "--delta",
            "1e-5",
            "--accountant",
            "xyz",
        ],
    )
    assert res.exit_code == 2 and "--accountant" in res.stderr
    cfg = cfg_with(tiny_overrides, 'privacy.mode="central_dp"', "privacy.noise_multiplier=1.0")
    run_experiment(cfg, tmp_path / "r")
    res = runner.invoke(app, ["privacy", "spent", str(tmp_path / "r")])
    assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 3
    res = runner.invoke(
        app, ["run", "--set", 'privacy.mode="central_dp"', "--set", "privacy.noise_multiplier=0"]
    )
    assert res.exit_code == 2 and "privacy.noise_multiplier is 0" in res.stderr
