"""FedGPT against the machine's own limits, measured in one process and written to
benchmarks/results/limits.json (and limits.md).

1. The machine: streaming bandwidth (an axpy, y += a·x, over --stream-floats float32
   values: GB/s of x consumed), single-core SHA-256 throughput on the same bytes, and
   float32 matmul FLOP/s.
2. The server's aggregation path on --clients updates of --params values (default 100 ×
   10 M): validation plus folding into the running FedAvg sum (federation.validation's
   one-pass check and aggregation.stream, as a streaming round runs them), and the
   ledger's payload hashing (federation.ledger.payload_hash), each as GB/s of updates
   consumed and as a fraction of (1). Eight distinct updates are cycled so that every
   update is read from memory, not cache.
3. The whole streaming round on the server side: the same updates through the exchange,
   the plain secure sum and the strategy (in-process runtime, clients that hand back a
   precomputed update), wall and CPU seconds per GB.

4. Every core busy: one training round of --worker-clients clients (the vs_flower job:
   2 x 64 char GPT-2, 4 local steps of batch 8 x 64) serial with one and with all torch
   threads, and with ``runtime.workers`` = cores (one thread each); the speed-up of the
   workers against the faster serial round.

Each measurement is the median of --repeats, interleaved (A B A B ...) so that a load
spike hits every configuration alike; wall and CPU (process) time both.

``--check`` exits 1 when a ratio is below its target (by hand or in a scheduled job; never
in the timed test suite): validation + fold ≥ 0.5 of the streaming bandwidth, hashing ≥ 0.8
of SHA-256's own throughput, workers ≥ 1.6x the serial round on 2 cores.

Usage: python benchmarks/limits.py [--clients 100] [--params 10000000] [--repeats 5]
                                   [--worker-clients 20] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from fedgpt.aggregation import AGGREGATORS, ServerContext
from fedgpt.federation.ledger import payload_hash
from fedgpt.federation.streaming import Folder
from fedgpt.federation.validation import check_update
from fedgpt.messages import Message

RESULTS = Path(__file__).parent / "results"
TARGETS = {"fold_over_bandwidth": 0.5, "hash_over_sha256": 0.8, "workers_speedup": 1.6}
JOB = [
    "data.min_chars=2000", "model.n_layer=2", "model.n_embd=64", "model.n_head=2",
    "model.context=64", "client.local_steps=4", "client.batch_size=8", "client.seq_len=64",
    "federation.fraction=1.0", "baselines.enabled=false",
]  # fmt: skip


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def interleaved(fns: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of each function, run A B C A B C ..."""
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(timed(fn))
    return {
        k: {
            "wall_s": statistics.median(w for w, _ in v),
            "cpu_s": statistics.median(c for _, c in v),
        }
        for k, v in runs.items()
    }


def replies(k: int, p: int) -> list[Message]:
    g = torch.Generator().manual_seed(0)
    return [
        Message(
            "train/result",
            {"round": 1, "num_examples": 10 + i, "nonce": "n"},
            {"delta": torch.randn(p, generator=g) * 0.01},
        )  # fmt: skip
        for i in range(k)
    ]


def fedavg():
    cls = AGGREGATORS.get("fedavg")
    return cls(cls.Config(kind="fedavg"), ServerContext())


def fold_all(msgs: list[Message], clients: int, p: int) -> None:
    folder = Folder(fedavg(), {}, p, 1, torch.Generator().manual_seed(0), sketch=False)
    for i in range(clients):
        m = msgs[i % len(msgs)]
        why, norm = check_update(m, 1, p, nonce="n", max_bytes=4 * p)
        assert why is None, why
        folder.add(f"c{i}", m.tensors["delta"], float(m.config["num_examples"]), norm)
    folder.finish()


def hash_all(msgs: list[Message], clients: int) -> None:
    for i in range(clients):
        payload_hash(msgs[i % len(msgs)])


def machine(floats: int, repeats: int) -> dict:
    x, acc = torch.randn(floats), torch.zeros(floats)
    raw = memoryview(x.numpy()).cast("B")
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t = interleaved(
        {
            "axpy": lambda: acc.add_(x, alpha=0.5),
            "sha256": lambda: hashlib.sha256(raw).digest(),
            "matmul": lambda: a @ b,
        },
        repeats,
    )
    gb = 4 * floats / 1e9
    return {
        "stream_gb_s": gb / t["axpy"]["wall_s"],
        "sha256_gb_s": gb / t["sha256"]["wall_s"],
        "matmul_gflop_s": 2 * 2048**3 / t["matmul"]["wall_s"] / 1e9,
        "threads": torch.get_num_threads(),
    }


def server_round(msgs: list[Message], clients: int, p: int):
    """A streaming round's server side: exchange, plain sum, FedAvg, server step."""
    from fedgpt.aggregation.server_opt import make_server_optimizer
    from fedgpt.config import load_config
    from fedgpt.federation.exchange import Exchange
    from fedgpt.federation.secure_sum import PlainSum
    from fedgpt.federation.state import ServerState
    from fedgpt.federation.strategy import FedAvgFamily
    from fedgpt.runtime import InProcessRuntime

    cfg = load_config(None, ["federation.norm_outlier_factor=10"])
    ids = [f"c{i}" for i in range(clients)]
    order = {c: i for i, c in enumerate(ids)}

    def handler(cid, msg):
        m = msgs[order[cid] % len(msgs)]
        return Message(m.type, {**m.config, "nonce": msg.config["nonce"]}, m.tensors)

    strategy = FedAvgFamily(PlainSum(cfg), fedavg(), make_server_optimizer(cfg.federation))
    state = ServerState(0, torch.zeros(p), strategy.optimizer.init(torch.zeros(p)))

    def go():
        strategy.round(state, ids, Exchange(InProcessRuntime(handler)))

    return go


def training_round(clients: int, workers: int, threads: int):
    """One round of real client training (in-process runtime or ``runtime.workers``)."""
    from fedgpt.build import build_client_app, build_server, prepare
    from fedgpt.config import load_config
    from fedgpt.experiment import in_process_runtime

    sizes = [f"data.max_clients={clients}", f"federation.min_clients={clients}"]
    cores = [f"runtime.workers={workers}", f"runtime.threads={threads}"]
    cfg = load_config(None, [*JOB, *sizes, *cores])
    prep = prepare(cfg)
    ids = list(prep.data)
    app = build_client_app(cfg, prep, ids, 0.0, {}, None, None, None)
    server, _, _ = build_server(cfg, prep, in_process_runtime(cfg, app), ids)
    state = server.init_state(prep.init)

    def go():
        torch.set_num_threads(threads)
        server.run_round(state)

    return go


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--stream-floats", type=int, default=100_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker-clients", type=int, default=20)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    cores, wk = os.cpu_count() or 1, args.worker_clients
    rounds = interleaved(
        {
            "serial, 1 thread": training_round(wk, 1, 1),
            f"serial, {cores} threads": training_round(wk, 1, cores),
            f"workers = {cores}": training_round(wk, cores, cores),
        },
        args.repeats,
    )
    serial = min(v["wall_s"] for k, v in rounds.items() if k.startswith("serial"))
    torch.set_num_threads(cores)
    k, p = args.clients, args.params
    mach = machine(args.stream_floats, args.repeats)
    msgs = replies(8, p)
    t = interleaved(
        {
            "fold": lambda: fold_all(msgs, k, p),
            "hash": lambda: hash_all(msgs, k),
            "round": server_round(msgs, k, p),
        },
        args.repeats,
    )
    gb = 4 * k * p / 1e9
    out = {
        "clients": k,
        "params": p,
        "update_gb": gb,
        "machine": mach,
        "seconds": t,
        "fold_gb_s": gb / t["fold"]["wall_s"],
        "hash_gb_s": gb / t["hash"]["wall_s"],
        "round_gb_s": gb / t["round"]["wall_s"],
        "round_cpu_s_per_gb": t["round"]["cpu_s"] / gb,
        "worker_clients": wk,
        "training_rounds": rounds,
        "workers_speedup": serial / rounds[f"workers = {cores}"]["wall_s"],
    }
    out["fold_over_bandwidth"] = out["fold_gb_s"] / mach["stream_gb_s"]
    out["hash_over_sha256"] = out["hash_gb_s"] / mach["sha256_gb_s"]
    out["round_over_bandwidth"] = out["round_gb_s"] / mach["stream_gb_s"]
    out["targets"] = TARGETS
    missed = {n: out[n] for n, want in TARGETS.items() if out[n] < want}
    out["missed"] = missed
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "limits.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "limits.md").write_text(table(out))
    print(table(out))
    return 1 if args.check and missed else 0


def table(o: dict) -> str:
    m = o["machine"]
    rows = [
        ("streaming bandwidth (axpy)", f"{m['stream_gb_s']:.2f} GB/s", ""),
        ("SHA-256, one core", f"{m['sha256_gb_s']:.2f} GB/s", ""),
        ("matmul float32", f"{m['matmul_gflop_s']:.1f} GFLOP/s", ""),
        ("validation + fold", f"{o['fold_gb_s']:.2f} GB/s",
         f"{o['fold_over_bandwidth']:.2f} of bandwidth (target ≥ 0.5)"),
        ("payload hashing", f"{o['hash_gb_s']:.2f} GB/s",
         f"{o['hash_over_sha256']:.2f} of SHA-256 (target ≥ 0.8)"),
        ("whole server round", f"{o['round_gb_s']:.2f} GB/s",
         f"{o['round_over_bandwidth']:.2f} of bandwidth; {o['round_cpu_s_per_gb']:.2f} CPU-s/GB"),
    ]  # fmt: skip
    for name, r in o["training_rounds"].items():
        rows.append((f"training round, {o['worker_clients']} clients, {name}",
                     f"{r['wall_s']:.2f} s", ""))  # fmt: skip
    rows.append(("workers against the faster serial round", f"{o['workers_speedup']:.2f}x",
                 "target ≥ 1.6x"))  # fmt: skip
    head = (f"{o['clients']} clients x {o['params']:,} parameters ({o['update_gb']:.1f} GB of "
            f"updates), {m['threads']} torch threads\n\n")  # fmt: skip
    lines = ["| measured | rate | ratio |", "| --- | --: | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
