"""What running over Flower costs: the same TINY job (2 rounds, 6 clients, 2 per round)
in-process and over a loopback Flower deployment (SuperLink + 3 SuperNodes, each client
message batch handled by a fresh ``flwr-clientapp`` process), written to
benchmarks/results/flower_overhead.json.

Reported: wall seconds of the whole job each way, seconds of each round (from
``metrics.jsonl``), per-round overhead (Flower minus in-process), the Flower run's phases
read from its log (ServerApp start, hello handshake, rounds, folder writing), and whether
the final weights agree. The load average is recorded too: on a shared 2-core machine it
moves the Flower numbers a lot (each exchange starts Python processes that import torch
and transformers).

With ``--baseline SRC`` (the ``src`` folder of another FedGPT checkout, e.g. a ``git
worktree`` of an earlier commit) every repeat also runs the Flower job on that code (its
ServerApp, ClientApp and agent processes get ``PYTHONPATH=SRC``), interleaved A B A B, and
the ratio of the wall times is reported (``wall_ratio``: this code / baseline).

Usage: python benchmarks/flower_overhead.py [--rounds 2] [--repeats 1] [--baseline SRC]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "runtime"), str(ROOT / "tests")]
RESULTS = Path(__file__).parent / "results" / "flower_overhead.json"

from flower_harness import FLOWER_TINY  # noqa: E402

TINY = [x for x in FLOWER_TINY if not x.startswith(("federation.rounds", "federation.eval_every"))]
TINY.append("federation.eval_every=1000")
NODES = 3


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path):
    from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints")).weights


def in_process(overrides: list[str], out: Path) -> dict:
    import torch

    from fedgpt.config import load_config
    from fedgpt.experiment import run_experiment

    torch.set_num_threads(1)
    cfg = load_config(None, [*overrides, f'out_dir="{out}"', 'name="inprocess"'])
    t = time.perf_counter()
    run_experiment(cfg, out / "inprocess")
    wall = time.perf_counter() - t
    return {"wall_s": wall, "round_s": [r["seconds"] for r in rows(out / "inprocess")]}


def phases(log: str) -> dict:
    """Seconds since the ServerApp started, of the progress lines it logs."""
    marks = {}
    for line in log.splitlines():
        m = re.search(r"\[fedgpt\]\s+([\d.]+)s (.*)", line)
        if not m:
            continue
        t, text = float(m.group(1)), m.group(2)
        if "SuperNode(s) connected" in text:
            marks["nodes_connected"] = t
        elif text.startswith("run folder"):
            marks["handshake_done"] = t
        elif text.startswith("done:"):
            marks["rounds_done"] = t
    return marks


def exchanges(log: str) -> int | None:
    """The number of exchanges the ServerApp reports (None: code that does not say)."""
    m = re.search(r"\[fedgpt\]\s+[\d.]+s (\d+) exchanges with the nodes", log)
    return int(m.group(1)) if m else None


def over_flower(overrides: list[str], out: Path, src: str | None = None) -> dict:

    old = os.environ.get("PYTHONPATH")
    if src:
        os.environ["PYTHONPATH"] = src
    try:
        return _over_flower(overrides, out)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def submit_run(dep, overrides: list[str], out: Path, nodes: int, timeout: float, wait: float):
    """Submit the FedGPT Flower App with ``overrides`` (run folder ``out/flower``) to the
    deployment ``dep`` and wait for it: (its run row, wall seconds, its log)."""
    import fedgpt.runtime.flower as pkg

    items = [*overrides, f'out_dir="{out}"', 'name="flower"']
    rc = out / "run.toml"
    rc.write_text(
        "overrides = '" + "; ".join(items).replace("'", '"') + "'\n"
        f"min-nodes = {nodes}\nnode-wait = 180.0\ntimeout = {timeout}\n"
    )
    t = time.perf_counter()
    run_id = dep.submit(Path(pkg.__file__).parent / "app", rc)
    row = dep.wait(run_id, timeout=wait, hint=out / "flower" / "summary.json")
    return row, time.perf_counter() - t, dep.log(run_id)


def _over_flower(overrides: list[str], out: Path) -> dict:
    from flower_harness import Deployment

    from fedgpt.config import load_config
    from fedgpt.experiment import prepare

    ids = [c.client_id for c in prepare(load_config(None, overrides)).clients]
    dep = Deployment(out / "deployment")
    try:
        dep.start_superlink()
        for i in range(NODES):
            dep.start_supernode(f"node{i}", f"client-id='{','.join(ids[i::NODES])}'")
        row, wall, log = submit_run(dep, overrides, out, NODES, 600.0, 1800)
    finally:
        dep.close()
    if row["status"] != "finished:completed":
        raise SystemExit(f"the Flower run failed: {row}\n{log}")
    return {
        "wall_s": wall,
        "round_s": [r["seconds"] for r in rows(out / "flower")],
        "serverapp_s": row["compute-time"]["serverapp-seconds"],
        "clientapp_s": row["compute-time"]["clientapp-seconds"],
        "network_bytes": row["network-traffic"]["total-bytes"],
        "phases_s": phases(log),
        "exchanges": exchanges(log),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--baseline", default="", help="src folder of the code to compare with")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    overrides = [*TINY, f"federation.rounds={args.rounds}"]
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            load_before = os.getloadavg()[0]
            ref = in_process(overrides, out / "a")
            fl = over_flower(overrides, out / "b")
            diff = float(
                (weights(out / "b" / "flower") - weights(out / "a" / "inprocess")).abs().max()
            )
            base = {}
            if args.baseline:
                base = over_flower(overrides, out / "c", args.baseline)
                bdiff = (weights(out / "c" / "flower") - weights(out / "a" / "inprocess")).abs()
                base["max_abs_weight_diff"] = float(bdiff.max())
                base["wall_ratio"] = fl["wall_s"] / base["wall_s"]
            runs.append(
                {
                    "inprocess": ref,
                    "flower": fl,
                    **({"baseline": base} if base else {}),
                    "per_round_overhead_s": [
                        f - i for f, i in zip(fl["round_s"], ref["round_s"], strict=True)
                    ],
                    "max_abs_weight_diff": diff,
                    "load_average_1min": [load_before, os.getloadavg()[0]],
                }
            )
    med = sorted(r["flower"]["wall_s"] - r["inprocess"]["wall_s"] for r in runs)
    ratios = sorted(r["baseline"]["wall_ratio"] for r in runs if "baseline" in r)
    result = {
        "job": {"overrides": overrides, "nodes": NODES, "clients": 6, "clients_per_round": 2},
        "machine": {"cpus": os.cpu_count()},
        "runs": runs,
        "median_extra_wall_s": med[len(med) // 2],
        **(
            {"baseline": args.baseline, "median_wall_ratio": ratios[len(ratios) // 2]}
            if ratios
            else {}
        ),
        "note": "round 1 is one exchange (train); the last round adds the evaluation exchange "
        "(all nodes); handshake = phases_s.handshake_done - nodes_connected; each exchange "
        "pays the SuperNode's pull interval (up to 3 s in flwr 1.42) and a fresh "
        "flwr-clientapp process per node that imports torch and transformers",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
