"""A Flower message larger than gRPC's and protobuf's 2 GB, on loopback, through FedGPT's
codec and node agent: one SuperLink, one SuperNode serving every client, a real FedGPT
job whose model is ``--params`` million parameters (a character GPT-2 of width 1024), so
the node's batch of replies (one float32 update per client) is ``clients × 4 × params``
bytes in one Flower message. Written to benchmarks/results/big_message.json.

Reported: the bytes each way of round 1 (from ``metrics.jsonl``), the largest message
(the node's reply), wall seconds, the machine's peak memory in use above what it used
before (every process: SuperLink, SuperNode, ClientApp, agent, ServerApp, sampled every
0.2 s), and whether the final weights equal an in-process run of the same job (run
after, in this process).

Usage: python benchmarks/big_message.py [--clients 4] [--layers 12]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "runtime"), str(ROOT / "tests"), str(ROOT / "benchmarks")]
RESULTS = Path(__file__).parent / "results" / "big_message.json"

from flower_overhead import in_process, rows, submit_run, weights  # noqa: E402


def job(clients: int, layers: int) -> list[str]:
    return [
        f"data.max_clients={clients}",
        "data.plays=['lear']",
        "model.n_embd=1024",
        f"model.n_layer={layers}",
        "model.n_head=16",
        "model.context=64",
        "client.optimizer='sgd'",
        "client.local_steps=1",
        "client.batch_size=1",
        "client.seq_len=16",
        "federation.rounds=1",
        "federation.fraction=1.0",
        f"federation.min_clients={clients}",
        "federation.eval_every=1000",
        "federation.eval_max_chars=64",
        "federation.norm_outlier_factor=0",
        "baselines.enabled=false",
        "report.sample_tokens=8",
        "runtime.threads=2",
    ]


class MemoryWatch:
    """Peak of the machine's memory in use above its level when started."""

    def __init__(self):
        import psutil

        self.psutil, self.base, self.peak = psutil, psutil.virtual_memory().used, 0
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.psutil.virtual_memory().used - self.base)
            time.sleep(0.2)

    def close(self) -> float:
        self.stop.set()
        self.th.join()
        return self.peak / 1e9


def over_flower(overrides: list[str], out: Path) -> dict:
    from flower_harness import Deployment

    from fedgpt.config import load_config
    from fedgpt.experiment import prepare

    ids = [c.client_id for c in prepare(load_config(None, overrides)).clients]
    dep = Deployment(out / "deployment")
    watch = MemoryWatch()
    try:
        dep.start_superlink()
        dep.start_supernode("node0", f"client-id='{','.join(ids)}'")
        row, wall, log = submit_run(dep, overrides, out, 1, 1500.0, 2400)
    finally:
        dep.close()
        peak = watch.close()
    if row["status"] != "finished:completed":
        raise SystemExit(f"the Flower run failed: {row}\n{log[-4000:]}")
    first = rows(out / "flower")[0]
    return {
        "wall_s": wall,
        "peak_memory_above_idle_gb": peak,
        "round1_bytes_up": first["bytes_up"],
        "round1_bytes_down": first["bytes_down"],
        "network_bytes": row["network-traffic"]["total-bytes"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--layers", type=int, default=12)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    overrides = job(args.clients, args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        fl = over_flower(overrides, out / "b")
        numel = int(weights(out / "b" / "flower").numel())
        ref = in_process(overrides, out / "a")
        diff = float((weights(out / "b" / "flower") - weights(out / "a" / "inprocess")).abs().max())
    reply = args.clients * 4 * numel
    result = {
        "job": {"overrides": overrides, "nodes": 1, "clients": args.clients},
        "machine": {"cpus": os.cpu_count()},
        "parameters": numel,
        "largest_message_bytes": reply,
        "over_2_gib": reply > 2**31,
        "flower": fl,
        "inprocess_wall_s": ref["wall_s"],
        "max_abs_weight_diff": diff,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
