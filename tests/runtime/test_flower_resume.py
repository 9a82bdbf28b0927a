"""A whole Flower deployment restarted mid-run, with real processes on 127.0.0.1: a run of
DP-SGD clients with a target ε stops after round 1; the SuperLink and every SuperNode are
then stopped and started afresh (new processes, a new Flower state: nothing survives in
``context.state``), and the ServerApp resumes the run folder to round 3, where the budgets
first refuse. Each node takes its clients' DP-SGD accounting from its own disk (keyed by
the run folder's identity), so the clients refuse exactly the rounds the uninterrupted
in-process run refuses, and the weights are the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("flwr")
from flower_harness import FLOWER_TINY, Deployment, require_flower_cli  # noqa: E402

require_flower_cli()

import fedgpt.runtime.flower as flower_pkg  # noqa: E402
from fedgpt.config import load_config  # noqa: E402
from fedgpt.experiment import prepare, run_experiment  # noqa: E402
from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402
from fedgpt.federation.verify import verify_run  # noqa: E402

pytestmark = pytest.mark.timeout(1200)

APP = Path(flower_pkg.__file__).parent / "app"
NODES = 2
DP = [*FLOWER_TINY, "federation.eval_every=100", "privacy.reproducible_noise=true",
      "runtime.receipts=false",  # one exchange less per round (receipts: test_forgery)
      'privacy.mode="dp_sgd"', "privacy.noise_multiplier=1.0", "privacy.target_epsilon=1.7",
      "federation.fraction=1.0"]  # fmt: skip


def deployment(root: Path) -> Deployment:
    ids = [c.client_id for c in prepare(load_config(None, DP)).clients]
    dep = Deployment(root)
    dep.start_superlink()
    for i in range(NODES):
        dep.start_supernode(f"node{i}", f"client-id='{','.join(ids[i::NODES])}'")
    return dep


def submit(dep: Deployment, path: Path, overrides: list[str], resume: str = "") -> int:
    text = "; ".join(overrides).replace("'", '"')
    lines = [f"overrides = '{text}'", f"min-nodes = {NODES}", "node-wait = 180.0",
             "timeout = 300.0", *([f"resume = '{resume}'"] if resume else [])]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return dep.submit(APP, path)


def finish(dep: Deployment, run_id: int, run_dir: Path) -> None:
    row = dep.wait(run_id, timeout=900, hint=run_dir / "summary.json")
    assert row["status"] == "finished:completed", f"{row}\n{dep.log(run_id)}"


def rows(run_dir: Path) -> list[dict]:
    keep = ("round", "participants", "dropped", "epsilon")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: json.loads(x).get(k) for k in keep} for x in lines]


def test_a_restarted_deployment_resumes_the_clients_privacy_budgets(tmp_path):
    out = tmp_path / "runs"
    ref_cfg = load_config(None, [*DP, "federation.rounds=3", f'out_dir="{out}"', 'name="ref"'])
    run_experiment(ref_cfg, out / "ref")
    run_dir = out / "fl"
    first = [*DP, "federation.rounds=1", f'out_dir="{out}"', 'name="fl"']
    dep = deployment(tmp_path / "one")
    try:
        finish(dep, submit(dep, tmp_path / "one.toml", first), run_dir)
    finally:
        dep.close()
    (run_dir / "summary.json").rename(tmp_path / "summary-1.json")  # wait() reads it below
    dep = deployment(tmp_path / "two")  # new processes, a new Flower state database
    try:
        rid = submit(dep, tmp_path / "two.toml", ["federation.rounds=3"], resume=str(run_dir))
        finish(dep, rid, run_dir)
    finally:
        dep.close()
    got, want = rows(run_dir), rows(out / "ref")
    assert got == want
    assert any(r["dropped"] for r in got) and max(r["epsilon"] for r in got) <= 1.7
    w = lambda d: load_checkpoint(latest_checkpoint(d / "checkpoints")).weights  # noqa: E731
    assert (w(run_dir) - w(out / "ref")).abs().max().item() <= 1e-6
    assert verify_run(run_dir).ok, verify_run(run_dir).problems
