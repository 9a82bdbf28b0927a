"""FedGPT in-process against Flower's simulation engine (Ray) on the same FedAvg job,
written to benchmarks/results/vs_flower.json (and .md, and vs_flower.png).

The job: the Shakespeare clients of the configuration below, K of them, every one trained
in each round (fraction 1, so both frameworks train the same cohort), R rounds of the same
local training (FedGPT's trainer: the same model, local steps, batch, sequence length and
per-client seeds), FedAvg weighted by the number of examples, no evaluation during the
rounds. FedGPT runs it with ``fedgpt.experiment.run_experiment`` (everything a run does:
ledger, checkpoints, receipts, report, and the evaluation of the final model on every
client's test text) with ``runtime.workers`` = cores; Flower with its ``FedAvg`` strategy
and a ClientApp that calls FedGPT's client algorithm, under
``flwr.simulation.run_simulation`` with one actor per core, followed by the same final
evaluation (one ``evaluate`` message to every node, FedGPT's task evaluation there).
Both final weight vectors are evaluated again by the same function on every client's
test text: the losses must agree.

A fourth run is FedGPT without its report, TensorBoard curves and sample generations
(``report.enabled = false``, ``report.tensorboard = false``, ``report.prompts = []``),
which Flower's job does not make; both FedGPT rows are reported.

The clients' training CPU is the floor for both: a third process (``train``) runs only
the clients' training, every client of every round, one thread, in a plain loop over the
same trainer and seeds (plus one process's imports and preparation). Each framework's
non-training CPU per round is its CPU minus that, over the rounds.

Each run is its own process; the parent samples the process tree (psutil, every 0.1 s)
for peak memory (PSS summed over the tree: pages shared by forked or Ray processes
count once) and CPU seconds (each process's own user + system time at its last sample,
so a forked worker is counted once, not again in its parent's children's time), and
repeats the three interleaved (FedGPT, Flower, training only, FedGPT, ...). Needs
``pip install -e ".[bench]"``.

Usage: python benchmarks/vs_flower.py [--clients 10 50 100] [--rounds 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
JOB = [
    "data.min_chars=2000",
    "model.n_layer=2",
    "model.n_embd=64",
    "model.n_head=2",
    "model.context=64",
    "client.local_steps=4",
    "client.batch_size=8",
    "client.seq_len=64",
    "federation.fraction=1.0",
    'federation.server_optimizer="fedavg"',
    "federation.norm_outlier_factor=0",
    "baselines.enabled=false",
]


def job(clients: int, rounds: int, workers: int, out: str) -> list[str]:
    return [
        *JOB,
        f"data.max_clients={clients}",
        f"federation.min_clients={clients}",
        f"federation.rounds={rounds}",
        f"federation.eval_every={rounds + 1}",
        f"runtime.workers={workers}",
        f"runtime.threads={workers}",
        f'out_dir="{out}"',
        'name="run"',
    ]


LEAN = ["report.enabled=false", "report.tensorboard=false", "report.prompts=[]"]


def run_fedgpt(clients: int, rounds: int, workers: int, out: str, lean: bool = False) -> str:
    from fedgpt.config import load_config
    from fedgpt.experiment import run_experiment
    from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint

    cfg = load_config(None, job(clients, rounds, workers, out) + (LEAN if lean else []))
    run_experiment(cfg, Path(out) / "run")
    w = load_checkpoint(latest_checkpoint(Path(out) / "run" / "checkpoints")).weights
    path = Path(out) / "weights.pt"
    import torch

    torch.save(w, path)
    return str(path)


_PREP: dict = {}


def _prepared(cfg):
    """Each Flower actor prepares the data and model once, as a FedGPT process does."""
    if "p" not in _PREP:
        import torch

        from fedgpt.experiment import prepare
        from fedgpt.federation.client_app import client_algorithm

        torch.set_num_threads(1)
        prep = prepare(cfg)
        _PREP["p"] = (prep, client_algorithm(prep.fm, prep.data, cfg.client), list(prep.data))
    return _PREP["p"]


def run_flower(clients: int, rounds: int, workers: int, out: str) -> str:
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedgpt.config import load_config
    from fedgpt.seeding import client_seed

    cfg = load_config(None, job(clients, rounds, 1, out))
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        prep, algo, ids = _prepared(cfg)
        cid = ids[int(context.node_config["partition-id"])]
        w = msg.content["arrays"].to_torch_state_dict()["w"]
        rnd = int(msg.content["config"]["server-round"])
        up = algo.train(cid, rnd, client_seed(cfg.seed, rnd, cid), w)
        arrays = ArrayRecord({"w": w + up.delta})
        metrics = MetricRecord({"num-examples": int(up.num_examples)})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """FedGPT's own evaluation of the final weights on this client's test text."""
        prep, algo, ids = _prepared(cfg)
        cid = ids[int(context.node_config["partition-id"])]
        fm = algo.fm
        fm.load(msg.content["arrays"].to_torch_state_dict()["w"])
        loss_sum, _, count, _ = algo.task.evaluate(
            fm.model, prep.data[cid].test, cfg.client.seq_len, cfg.federation.eval_max_chars
        )
        out = MetricRecord({"loss-sum": float(loss_sum), "count": float(count)})
        return Message(RecordDict({"metrics": out}), reply_to=msg)

    server = ServerApp()
    final: dict = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        from fedgpt.experiment import prepare

        init = prepare(cfg).init
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                          min_available_nodes=clients)  # fmt: skip
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord({"w": init}),
                                num_rounds=rounds)  # fmt: skip
        final["w"] = result.arrays.to_torch_state_dict()["w"]
        # then, as a FedGPT run does after its last round, every client evaluates the model
        content = RecordDict({"arrays": result.arrays})
        asks = [Message(content, dst_node_id=n, message_type="evaluate")
                for n in grid.get_node_ids()]  # fmt: skip
        replies = list(grid.send_and_receive(asks))
        got = [r.content["metrics"] for r in replies if r.has_content()]
        if len(got) != clients:
            raise RuntimeError(f"{clients - len(got)} clients did not evaluate")
        final["loss"] = sum(m["loss-sum"] for m in got) / sum(m["count"] for m in got)

    backend = {"init_args": {"num_cpus": workers, "include_dashboard": False},
               "client_resources": {"num_cpus": 1, "num_gpus": 0.0}}  # fmt: skip
    run_simulation(server, client, num_supernodes=clients, backend_config=backend)
    print(f"final evaluation on every client: loss {final['loss']:.6f}", file=sys.stderr)
    path = Path(out) / "weights.pt"
    torch.save(final["w"], path)
    return str(path)


def run_train(clients: int, rounds: int, workers: int, out: str) -> str:
    """Only the clients' training: what both frameworks must spend at the least."""
    import torch

    from fedgpt.config import load_config
    from fedgpt.seeding import client_seed

    cfg = load_config(None, job(clients, rounds, 1, out))
    prep, algo, ids = _prepared(cfg)
    for rnd in range(1, rounds + 1):
        for cid in ids:
            algo.train(cid, rnd, client_seed(cfg.seed, rnd, cid), prep.init)
    path = Path(out) / "weights.pt"
    torch.save(prep.init, path)
    return str(path)


def test_loss(weights_path: str, clients: int, rounds: int) -> float:
    import torch

    from fedgpt.config import load_config
    from fedgpt.experiment import prepare

    cfg = load_config(None, job(clients, rounds, 1, "/tmp"))
    prep = prepare(cfg)
    prep.fm.load(torch.load(weights_path))
    from fedgpt.tasks import CausalLM

    loss = count = 0.0
    for d in prep.data.values():
        s, _, n, _ = CausalLM().evaluate(prep.fm.model, d.test, cfg.client.seq_len, 0)
        loss, count = loss + s, count + n
    return loss / count


def measure(kind: str, clients: int, rounds: int, workers: int) -> dict:
    """Run one framework in a child process, sampling its process tree."""
    import psutil

    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            kind,
            str(clients),
            str(rounds),
            str(workers),
            out,
        ]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        peak, cpu, stop = [0], {}, threading.Event()

        def sample():
            root = psutil.Process(proc.pid)
            while not stop.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                    rss = 0
                    for p in tree:
                        try:
                            rss += p.memory_full_info().pss  # shared pages once
                            t = p.cpu_times()  # its own: a reaped child's is not added
                            cpu[p.pid] = max(cpu.get(p.pid, 0.0), t.user + t.system)
                        except psutil.Error:
                            pass
                    peak[0] = max(peak[0], rss)
                except psutil.Error:
                    break
                time.sleep(0.1)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        stdout, _ = proc.communicate()
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} failed with exit {proc.returncode}")
        path = stdout.strip().splitlines()[-1]
        loss = test_loss(path, clients, rounds)
    return {"wall_s": wall, "cpu_s": sum(cpu.values()), "peak_rss_gb": peak[0] / 1e9, "loss": loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        kind, k, r, w, out = args.one
        lean = lambda *a: run_fedgpt(*a, lean=True)  # noqa: E731
        fn = {"fedgpt": run_fedgpt, "lean": lean, "flower": run_flower, "train": run_train}[kind]
        print(fn(int(k), int(r), int(w), out), flush=True)
        return
    rows = []
    for k in args.clients:
        runs: dict[str, list[dict]] = {"fedgpt": [], "lean": [], "flower": [], "train": []}
        for _ in range(args.repeats):
            for kind in runs:  # interleaved: A B A B
                runs[kind].append(measure(kind, k, args.rounds, args.workers))
                print(k, kind, runs[kind][-1], flush=True)
        med = {
            kind: {m: statistics.median(x[m] for x in v) for m in v[0]} for kind, v in runs.items()
        }
        f, g, t, lean = med["flower"], med["fedgpt"], med["train"], med["lean"]
        for m in (f, g, lean):  # CPU beyond the clients' training, per round
            m["non_training_cpu_per_round_s"] = (m["cpu_s"] - t["cpu_s"]) / args.rounds
        gn, fn = g["non_training_cpu_per_round_s"], f["non_training_cpu_per_round_s"]
        ln = lean["non_training_cpu_per_round_s"]
        rows.append({
            "clients": k, "rounds": args.rounds, "workers": args.workers, "fedgpt": g, "flower": f,
            "training_only": {"cpu_s": t["cpu_s"], "wall_s": t["wall_s"]},
            "fedgpt_without_report": lean,
            "lean_wall_flower_over_fedgpt": f["wall_s"] / lean["wall_s"],
            "lean_non_training_cpu_fedgpt_over_flower": ln / fn if fn > 0 else None,
            "non_training_cpu_fedgpt_over_flower": gn / fn if fn > 0 else None,
            "wall_flower_over_fedgpt": f["wall_s"] / g["wall_s"],
            "cpu_flower_over_fedgpt": f["cpu_s"] / g["cpu_s"],
            "memory_fedgpt_over_flower": g["peak_rss_gb"] / f["peak_rss_gb"],
            "loss_difference": abs(f["loss"] - g["loss"]),
            "runs": runs,
        })  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vs_flower.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| clients | FedGPT wall | Flower wall | Flower ÷ FedGPT wall | CPU ratio | non-training "
        "CPU per round FedGPT / Flower | peak memory FedGPT / Flower | loss FedGPT / Flower |",
        "| --: | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for r in rows:
        g, f = r["fedgpt"], r["flower"]
        nt = r["non_training_cpu_fedgpt_over_flower"]
        lines.append(
            f"| {r['clients']} | {g['wall_s']:.1f} s | {f['wall_s']:.1f} s | "
            f"{r['wall_flower_over_fedgpt']:.2f}x | {r['cpu_flower_over_fedgpt']:.2f}x | "
            f"{g['non_training_cpu_per_round_s']:.2f} / {f['non_training_cpu_per_round_s']:.2f} s"
            f" ({nt:.3f}) | {g['peak_rss_gb']:.2f} / {f['peak_rss_gb']:.2f} GB "
            f"({r['memory_fedgpt_over_flower']:.2f}) | {g['loss']:.5f} / {f['loss']:.5f} |"
        )
    lines += [
        "",
        "FedGPT without its report, TensorBoard curves and sample generations "
        "(`report.enabled = false`, `report.tensorboard = false`, `report.prompts = []`), "
        "which Flower's job does not make:",
        "",
        "| clients | FedGPT wall | Flower ÷ FedGPT wall | non-training CPU per round FedGPT / "
        "Flower |",
        "| --: | --: | --: | --: |",
    ]
    for r in rows:
        lean, f = r["fedgpt_without_report"], r["flower"]
        lines.append(
            f"| {r['clients']} | {lean['wall_s']:.1f} s | {r['lean_wall_flower_over_fedgpt']:.2f}x"
            f" | {lean['non_training_cpu_per_round_s']:.2f} / "
            f"{f['non_training_cpu_per_round_s']:.2f} s "
            f"({r['lean_non_training_cpu_fedgpt_over_flower']:.3f}) |"
        )
    (RESULTS / "vs_flower.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows)


def plot(rows: list[dict]) -> None:
    """Wall time, non-training CPU per round and peak memory against clients per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["clients"] for r in rows]
    panels = [("wall_s", "end-to-end wall (s)"),
              ("non_training_cpu_per_round_s", "non-training CPU per round (s)"),
              ("peak_rss_gb", "peak memory, PSS (GB)")]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for kind, name in (("fedgpt", "FedGPT in-process"),
                           ("fedgpt_without_report", "FedGPT, no report"),
                           ("flower", "Flower simulation")):  # fmt: skip
            ax.plot(ks, [r[kind][key] for r in rows], marker="o", label=name)
        ax.set_xlabel("clients per round")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "vs_flower.png", dpi=120)


if __name__ == "__main__":
    main()
