"""Every class of user mistake: one line on stderr naming the key or file, exit code 2."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fedgpt.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--set", "client.lrr=0.1"], "unknown config key 'client.lrr'"),
        (["run", "--set", "client.lr=fast"], "config key 'client.lr'"),
        (["run", "--set", "client.lr=-1"], "config key 'client.lr': input should be greater"),
        (["run", "--set", "federation.fraction=1.5"], "config key 'federation.fraction'"),
        (
            ["run", "--set", 'federation.server_optimizer="sgd"'],
            "federation.server_optimizer: unknown server optimiser",
        ),
        (["run", "--set", "model.n_head=3"], "model.n_embd (64) must be divisible"),
        (["run", "--set", "client.seq_len=500"], "client.seq_len (500) must be <= model.context"),
        (["run", "--set", "nonsense"], "expected dotted.key=value"),
        (["run", "-c", "/no/such/config.toml"], "config file '/no/such/config.toml'"),
        (["run", "--set", 'model.path="/no/such/model"'], "model.path '/no/such/model'"),
        (["run", "--set", 'data.source="dir"'], "data.path must name a directory"),
        (
            ["run", "--set", 'data.source="dir"', "--set", 'data.path="/no/such/dir"'],
            "/no/such/dir",
        ),
        (["run", "--set", 'data.plays=["hamlett"]'], "hamlett"),
        (["run", "--resume", "/no/such/run"], "not a run folder"),
        (["run", "--set", "privacy.post_quantum=true"], "privacy.post_quantum applies to"),
        (["run", "--set", "federation.hybrid_lambda=0.5"], "needs data.public_plays"),
        (
            [
                "run",
                "--set",
                'privacy.secure_aggregation="secagg"',
                "--set",
                "federation.fraction=0.001",
            ],
            "at least 3 clients",
        ),
        (["eval", "/no/such/run", "--data", "x.txt"], "run folder '/no/such/run'"),
        (["generate", "/no/such/run", "--prompt", "x"], "run folder '/no/such/run'"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [*args, "--quiet"] if args[0] == "run" else args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()  # nothing written for a bad input


def test_bad_toml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[client]\nlr = = 3\n")
    res = runner.invoke(app, ["run", "-c", str(bad)])
    assert res.exit_code == 2 and f"config file '{bad}': invalid TOML" in res.stderr


def test_malformed_client_data_names_file_and_line(tmp_path):
    d = tmp_path / "clients" / "hospital-a"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n')
    res = runner.invoke(
        app,
        [
            "data",
            "stats",
            "--set",
            'data.source="dir"',
            "--set",
            f'data.path="{tmp_path / "clients"}"',
        ],
    )
    assert res.exit_code == 2 and f"{d / 'train.jsonl'}:2:" in res.stderr


def test_real_process_prints_one_line_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "fedgpt", "run", "--set", "client.batch_size=0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: config key 'client.batch_size': input should be greater than or equal to 1, got 0"
    ]
