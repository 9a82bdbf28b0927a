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
    'name=""',
    'name="a\\u0000b"',
    'name="xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"',
    'out_dir="/proc/fedgpt"',
    'out_dir="/etc/hostname"',
    'runtime.ledger_key="/tmp"',
    "data.min_chars=-1",
    "data.train_fraction=0",
    "data.train_fraction=1.5",
    "data.max_clients=-1",
    'data.plays=["nope"]',
    'data.source="s3"',
    "model.n_layer=0",
    "model.n_embd=-1",
    "model.n_head=0",
    "model.n_head=3",
    "model.dropout=1.5",
    "model.context=0",
    "model.lora.r=0",
    "model.lora.alpha=nan",
    'model.path="/nonexistent/model"',
    'task.kind="x"',
    'client.optimizer="lbfgs"',
    "client.lr=-1",
    "client.momentum=2",
    "client.local_steps=-1",
    "client.batch_size=0",
    "client.seq_len=0",
    "client.grad_clip=nan",
    "client.prox_mu=-1",
    "client.local_epochs=-1",
    "federation.rounds=0",
    "federation.rounds=-5",
    "federation.fraction=0",
    "federation.fraction=2",
    "federation.min_clients=0",
    'federation.server_optimizer="sgdx"',
    "federation.server_momentum=1.5",
    "federation.beta1=1",
    "federation.tau=0",
    'federation.distill="kd"',
    "federation.eval_every=0",
    "federation.checkpoint_keep=0",
    'federation.aggregator.kind="median2"',
    "federation.max_examples=0",
    "baselines.lr=inf",
    "baselines.local_val_fraction=1",
    'privacy.mode="strong"',
    "privacy.delta=0",
    "privacy.target_epsilon=-1",
    'privacy.accountant="gdp"',
    "privacy.target_quantile=1.5",
    'privacy.secure_aggregation="he"',
    "privacy.secagg_threshold=0",
    "privacy.secagg_range=0",
    "privacy.clip_norm=0",
    "attack.fraction=1.5",
    'attack.kind="x"',
    'devices.tier="x"',
    "runtime.threads=-1",
    "runtime.round_timeout=-1",
    "runtime.fail_fraction=2",
    'runtime.drop_after_stage="x"',
    "runtime.straggle_delay=nan",
    'seed="abc"',
    "federation.rounds=1.5",
    'data.plays="lear"',
    "runtime.ledger=2",
    "data.plays=[[[[1]]]]",
    'runtime.receipts_dir="/etc/hostname"',
    f'runtime.ledger_key="{"k" * 300}"',  # longer than a file name may be
    f'out_dir="{"o" * 300}"',
    "data.max_records=5",  # text has no records to sample
]


@pytest.mark.parametrize("setting", BAD_CONFIGS)
def test_a_bad_setting_exits_2_in_one_line_and_writes_nothing(setting, tmp_path):
    out = CliRunner().invoke(
        app, ["run", "--set", f'out_dir="{tmp_path / "runs"}"', "--no-baselines", "--set", setting]
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


def test_the_corpus_is_large_enough():
    assert len(set(BAD_CONFIGS)) >= 60
