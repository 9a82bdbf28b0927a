"""FedGPT over a real Flower deployment on 127.0.0.1: SuperLink, three SuperNodes, the
``flwr`` CLI, each in its own process.

One deployment with TLS on the SuperLink's API and SuperNode authentication (the
in-memory grid of ``test_flower_grid.py`` covers the rest without processes):
(a) two TINY rounds give the in-process runtime's final weights; (b) SuperNodes that are
not registered are refused; (c) SecAgg over Flower gives the in-process aggregate; (d) a
failing ServerApp shows as failed. A run's outcome is read with ``flwr ls --format json``
(``flwr run`` returns before the run ends). The Flower runs are submitted together when
the module starts, so their waits overlap; every ``flwr-clientapp`` process costs seconds
of imports, so the module runs as few of them as its claims need.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
# Flower's console scripts sit beside this interpreter (a virtual environment need not be
# activated for them to be found); its subprocesses find flwr-clientapp the same way
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
if shutil.which("flower-superlink") is None or shutil.which("flower-supernode") is None:
    pytest.skip("Flower's command-line tools are not installed", allow_module_level=True)

import torch  # noqa: E402
from conftest import with_identities  # noqa: E402
from flower_harness import FLOWER_TINY, Deployment, make_node_key  # noqa: E402

import fedgpt.runtime.flower as flower_pkg  # noqa: E402
from fedgpt.config import load_config  # noqa: E402
from fedgpt.experiment import prepare, run_experiment  # noqa: E402
from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.timeout(900)

APP = Path(flower_pkg.__file__).parent / "app"
NODES = 3
TINY = FLOWER_TINY
# one round: a SecAgg round is four exchanges (the two-round case runs in test_flower_grid)
SECAGG = [
    *TINY,
    'privacy.secure_aggregation="secagg"',
    "federation.min_clients=3",
    "federation.rounds=1",
]


def node_configs() -> list[str]:
    ids = [c.client_id for c in prepare(load_config(None, TINY)).clients]
    return [f"client-id='{','.join(ids[i::NODES])}'" for i in range(NODES)]


def run_config(path: Path, overrides: list[str], out: Path, name: str) -> Path:
    items = [*overrides, f'out_dir="{out}"', f'name="{name}"']
    text = "; ".join(items).replace("'", '"')
    path.write_text(
        f"overrides = '{text}'\nmin-nodes = {NODES}\nnode-wait = 180.0\ntimeout = 300.0\n"
    )
    return path


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """TLS on the SuperLink's API, SuperNode authentication, three registered nodes."""
    root = tmp_path_factory.mktemp("flower_secure")
    dep = Deployment(root, tls=True, auth=True)
    try:
        dep.start_superlink()
        for i, nc in enumerate(node_configs()):
            key, pub = make_node_key(root / "keys", f"node{i}")
            dep.register(pub)
            dep.start_supernode(f"node{i}", nc, key=key)
        yield dep
    finally:
        dep.close()


@pytest.fixture(scope="module")
def jobs(secure, tmp_path_factory):
    """Every Flower run of this module, submitted at once: name -> (deployment, run id,
    run folder)."""
    out = tmp_path_factory.mktemp("flower_runs")
    plan = {
        "fedavg": (secure, TINY),
        "secagg": (secure, with_identities(SECAGG, out / "identities")),
        "broken": (secure, [*TINY, "federation.no_such_key=1"]),
    }
    started = {}
    for name, (dep, overrides) in plan.items():
        rc = run_config(out / f"{name}.toml", overrides, out, name)
        started[name] = (dep, dep.submit(APP, rc), out / name)
    return started


def finished(jobs, name: str) -> tuple[dict, Path]:
    dep, run_id, run_dir = jobs[name]
    row = dep.wait(run_id, timeout=600, hint=run_dir / "summary.json")
    assert row["status"] == "finished:completed", f"{row}\n{dep.log(run_id)}"
    return row, run_dir


def final_weights(run_dir: Path) -> torch.Tensor:
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints")).weights


def in_process(overrides: list[str], out: Path) -> tuple[torch.Tensor, list[dict]]:
    cfg = load_config(None, [*overrides, f'out_dir="{out}"', 'name="ref"'])
    run_experiment(cfg, out / "ref")
    rows = [json.loads(x) for x in (out / "ref" / "metrics.jsonl").read_text().splitlines()]
    return final_weights(out / "ref"), rows


def same_run(run_dir: Path, ref: tuple[torch.Tensor, list[dict]]) -> None:
    weights, rows = ref
    got = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["participants"] for r in got] == [r["participants"] for r in rows]
    assert all(not r["dropped"] for r in got)
    assert (final_weights(run_dir) - weights).abs().max().item() <= 1e-6
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["runtime"]["kind"] == "flower" and len(summary["runtime"]["nodes"]) == NODES


def test_two_rounds_over_flower_with_tls_and_authentication_equal_in_process(jobs, tmp_path):
    ref = in_process(TINY, tmp_path)
    _, run_dir = finished(jobs, "fedavg")
    same_run(run_dir, ref)


def test_unregistered_supernodes_are_refused(secure, jobs, tmp_path):
    stranger, _ = make_node_key(tmp_path, "stranger")  # a key the SuperLink never saw
    refused = [
        secure.start_supernode("stranger", "client-id='x'", key=stranger),
        secure.start_supernode("keyless", "client-id='x'"),
    ]
    end = time.monotonic() + 120
    while any(p.popen.poll() is None for p in refused) and time.monotonic() < end:
        time.sleep(0.5)
    for p in refused:
        assert p.popen.returncode not in (None, 0), p.tail()
        log = p.log.read_text(errors="replace")
        assert "SuperNode authentication is enabled" in log or "Failed to activate" in log, log
    online = [n for n in secure.nodes() if n["status"] == "online"]
    assert len(online) == NODES


def test_secagg_over_flower_equals_in_process(jobs, tmp_path):
    ref = in_process(SECAGG, tmp_path)
    _, run_dir = finished(jobs, "secagg")
    same_run(run_dir, ref)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and len(rows[0]["participants"]) == 3


def test_a_failing_server_app_shows_in_flwr_ls(jobs):
    dep, run_id, _ = jobs["broken"]
    row = dep.wait(run_id, timeout=600)
    assert row["status"] == "finished:failed", row
    assert "federation.no_such_key" in dep.log(run_id)
