"""Every file of the newest checkpoint truncated, emptied or garbled in turn, and a torn
last line of metrics.jsonl: resume takes the newest intact checkpoint, says what it
skipped, and ends bit-identical to the uninterrupted run (the ledger still verifies)."""

from __future__ import annotations

import shutil

import pytest
import torch

from fedgpt.config import load_config
from fedgpt.experiment import run_experiment
from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint
from fedgpt.federation.verify import verify_run

FILES = ["weights.safetensors", "server_state.safetensors", "state.json", "manifest.json"]


def weights(run) -> torch.Tensor:
    return load_checkpoint(latest_checkpoint(run / "checkpoints")).weights


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import TINY

    root = tmp_path_factory.mktemp("torn")
    over = [*TINY, f'out_dir="{root}"', "baselines.enabled=false", "federation.eval_every=100"]
    run_experiment(load_config(None, [*over, "federation.rounds=3"]), root / "whole")
    run_experiment(load_config(None, [*over, "federation.rounds=2"]), root / "stopped")
    return root, weights(root / "whole")


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(bytes(b ^ 0xA5 for b in data[:64]) + data[64:])


def resume(root, name: str, capsys) -> str:
    from fedgpt.runner import resume_config

    cfg = resume_config(root / name, ["federation.rounds=3"])
    from fedgpt.callbacks import Hooks

    lines = []

    class Log(Hooks):
        def log(self, msg):
            lines.append(msg)

    run_experiment(cfg, root / name, resume=True, hooks=Log())
    return "\n".join(lines)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_checkpoint_file_falls_back_to_the_older_one(runs, name, how, capsys):
    root, whole = runs
    case = f"{name}-{how}"
    shutil.copytree(root / "stopped", root / case)
    damage(root / case / "checkpoints" / "round_000002" / name, how)
    log = resume(root, case, capsys)
    assert "skipped checkpoint round_000002:" in log and "resuming after round 1" in log
    assert torch.equal(weights(root / case), whole)
    assert verify_run(root / case).ok, verify_run(root / case).problems


def test_a_torn_metrics_line_is_cut_back(runs, capsys):
    root, whole = runs
    shutil.copytree(root / "stopped", root / "torn-metrics")
    with open(root / "torn-metrics" / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 3, "train_lo')
    log = resume(root, "torn-metrics", capsys)
    assert "cut back a torn last line" in log
    assert torch.equal(weights(root / "torn-metrics"), whole)
    rows = (root / "torn-metrics" / "metrics.jsonl").read_text().splitlines()
    assert [r[:11] for r in rows] == ['{"round": 1', '{"round": 2', '{"round": 3']
