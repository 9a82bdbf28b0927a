"""The corpus of bad inputs: each exits 2 with one line naming the key, and writes nothing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedgpt.cli.main import app

BAD_CONFIGS = [
    "seed=99999999999999999999999",
    "seed=-1",
    'name="../../x"',
    'name="a/b"',
    'name=".."',
    "privacy.noise_multiplier=1e308",
    "privacy.noise_multiplier=nan",
    "client.lr=inf",
    "client.lr=1e9",
    "federation.server_lr=1e309",
    "privacy.secagg_range=inf",
    "privacy.clip_norm=-inf",
    "model.context=100000000",
    "privacy.delta=1.5",
    'data.path="/tmp"',
]


@pytest.mark.parametrize("setting", BAD_CONFIGS)
def test_a_bad_setting_exits_2_in_one_line_and_writes_nothing(setting, tmp_path):
    out = CliRunner().invoke(
        app, ["run", "--set", setting, "--set", f'out_dir="{tmp_path / "runs"}"', "--no-baselines"]
    )
    key = setting.split("=")[0]
    assert out.exit_code == 2, out.output
    assert out.output.count("\n") == 1 and key in out.output, out.output
    assert not (tmp_path / "runs").exists()


def test_planning_noise_for_no_steps_is_refused():
    out = CliRunner().invoke(app, ["privacy", "plan", "--steps", "0", "--target-epsilon", "1",
                                   "--sample-rate", "0.1", "--delta", "1e-5"])  # fmt: skip
    assert out.exit_code == 2 and "steps must be >= 1" in out.output


def test_an_unknown_key_says_which_one_was_meant(tmp_path):
    out = CliRunner().invoke(app, ["run", "--set", "federation.roundz=3"])
    assert out.exit_code == 2
    assert "unknown config key 'federation.roundz'; did you mean 'federation.rounds'?" in out.output


def test_ckks_keys_are_never_overwritten(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["keys", "ckks", str(tmp_path / "k")]).exit_code == 0
    secret = (tmp_path / "k" / "secret_context.bin").read_bytes()
    again = runner.invoke(app, ["keys", "ckks", str(tmp_path / "k")])
    assert again.exit_code == 2 and "holds CKKS keys already" in again.output
    assert (tmp_path / "k" / "secret_context.bin").read_bytes() == secret
    (tmp_path / "file").write_text("x")
    onto = runner.invoke(app, ["keys", "ckks", str(tmp_path / "file")])
    assert onto.exit_code == 2 and "is a file" in onto.output


def test_version():
    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.startswith("fedgpt ")
