"""Crash recovery for real: ``fedgpt run`` killed with SIGKILL once a checkpoint exists,
then ``fedgpt run --resume``, ends bit for bit where an uninterrupted run ends, and the
ledger of the resumed run verifies (``fedgpt verify``)."""

import json
import signal
import subprocess
import sys
import time

import torch
from conftest import TINY
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedgpt.cli.main import app
from fedgpt.config import load_config
from fedgpt.experiment import run_experiment

runner = CliRunner()
KILL_AFTER = 2  # kill once the checkpoint of this round exists
OVERRIDES = [
    *TINY,
    "baselines.enabled=false",
    "client.local_steps=16",  # rounds long enough that the kill lands mid-run
    "federation.rounds=14",
    "federation.eval_every=100",
    "runtime.threads=1",
]


def ledger_rounds(run_dir):
    entries = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    return [
        (e["round"], e["global_weights"], e["updates"]) for e in entries if e["kind"] == "round"
    ]


def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(tmp_path):
    cut = tmp_path / "cut"
    args = [a for o in OVERRIDES for a in ("--set", o)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedgpt", "run", "--quiet", "--out", str(cut), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    marker = cut / "checkpoints" / f"round_{KILL_AFTER:06d}" / "state.json"
    try:
        deadline = time.monotonic() + 300
        while not marker.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not (cut / "summary.json").exists() and not (cut / "model").exists()

    res = runner.invoke(app, ["run", "--quiet", "--resume", str(cut)])
    assert res.exit_code == 0, res.output
    run_experiment(load_config(None, OVERRIDES), tmp_path / "full")

    a = load_file(tmp_path / "full/model/model.safetensors")
    b = load_file(cut / "model/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = "checkpoints/round_000014/weights.safetensors"
    assert torch.equal(
        load_file(tmp_path / "full" / last)["weights"], load_file(cut / last)["weights"]
    )
    assert ledger_rounds(cut) == ledger_rounds(tmp_path / "full")
    rows = [json.loads(x)["round"] for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 15))
    res = runner.invoke(app, ["verify", str(cut)])
    ok = res.output.strip().splitlines()[-1]
    assert res.exit_code == 0 and ok.startswith("OK:") and "14 rounds" in ok
