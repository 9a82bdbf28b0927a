"""Peak server memory of one FedAvg round, written to benchmarks/results/server_memory.json
(and .md, and a plot server_memory.png).

The server side of a real round (exchange, validation, the plain secure sum, FedAvg, the
server step) over in-process clients that each hand back a freshly allocated update of
the model's size, as a training client would; the number reported is the growth of the
process's peak RSS during the round over its RSS before it (which already holds the global
weights), in multiples of one model's float32 size. Each configuration runs in its own
process (peak RSS only grows). Sizes: SmolLM2-135M full fine-tuning (134.5 M parameters)
and its default LoRA adapters (rank 8 on all seven projections of 30 layers: 2.44 M);
streaming with the norm-outlier rule on (its holdback of the largest updates) and off, and
the held path (federation.streaming = false) where it fits in memory.

Usage: python benchmarks/server_memory.py [--clients 10 50 200] [--held-max-gb 8]
                                          [--models full lora]  (rows of the others kept)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODELS = {"smollm2-135m full": 134_515_008, "smollm2-135m lora r=8": 2_442_240}


def one(params: int, clients: int, streaming: bool, factor: float) -> dict:
    import torch

    from fedgpt.aggregation import AGGREGATORS, ServerContext
    from fedgpt.aggregation.server_opt import make_server_optimizer
    from fedgpt.config import load_config
    from fedgpt.federation.exchange import Exchange
    from fedgpt.federation.secure_sum import PlainSum
    from fedgpt.federation.state import ServerState
    from fedgpt.federation.strategy import FedAvgFamily
    from fedgpt.malloc import return_large_blocks
    from fedgpt.messages import Message
    from fedgpt.runtime import InProcessRuntime

    return_large_blocks()  # as fedgpt.build.build_server does for every server
    cfg = load_config(None, [f"federation.norm_outlier_factor={factor}"])
    cls = AGGREGATORS.get("fedavg")
    agg = cls(cls.Config(kind="fedavg"), ServerContext())
    strategy = FedAvgFamily(
        PlainSum(cfg), agg, make_server_optimizer(cfg.federation), stream=streaming
    )
    w = torch.zeros(params)
    state = ServerState(0, w, strategy.optimizer.init(w))
    base = torch.full((params,), 1e-3)

    def handler(cid, msg):  # a fresh update per client, as a trainer returns one
        d = base * (1 + int(cid[1:]) % 7)
        config = {"round": 1, "num_examples": 5, "nonce": msg.config["nonce"]}
        return Message("train/result", config, {"delta": d})

    ids = [f"c{i}" for i in range(clients)]
    before = rss_now()
    new, result = strategy.round(state, ids, Exchange(InProcessRuntime(handler)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert len(result.participants) == clients, result.dropped
    model = 4 * params
    return {
        "growth_bytes": peak - before,
        "model_bytes": model,
        "growth_models": (peak - before) / model,
    }


def rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--held-max-gb", type=float, default=8.0)
    ap.add_argument("--models", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        p, k, s, f = args.one
        print(json.dumps(one(int(p), int(k), s == "1", float(f))))
        return
    chosen = {m: p for m, p in MODELS.items() if m.split()[1] in args.models}
    old = RESULTS / "server_memory.json"
    rows = (
        [r for r in json.loads(old.read_text()) if r["model"] not in chosen] if old.exists() else []
    )
    for model, params in chosen.items():
        for k in args.clients:
            modes = [
                ("streaming, outlier rule on", True, 10.0),
                ("streaming, outlier rule off", True, 0.0),
            ]
            if 4 * params * k / 1e9 <= args.held_max_gb:
                modes.append(("held (streaming = false)", False, 10.0))
            for name, streaming, factor in modes:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    str(params),
                    str(k),
                    "1" if streaming else "0",
                    str(factor),
                ]
                got = json.loads(
                    subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                )
                rows.append({"model": model, "params": params, "clients": k, "mode": name, **got})
                gb, times = got["growth_bytes"] / 1e9, got["growth_models"]
                print(f"{model:24s} {k:4d} {name:30s} +{gb:6.2f} GB = {times:5.2f} models")
    rows.sort(key=lambda r: (list(MODELS).index(r["model"]), r["clients"]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "server_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| model | clients | mode | peak RSS growth | models |",
        "| --- | --: | --- | --: | --: |",
    ]
    lines += [f"| {r['model']} | {r['clients']} | {r['mode']} | {r['growth_bytes'] / 1e9:.2f} GB | "
              f"{r['growth_models']:.2f} |" for r in rows]  # fmt: skip
    (RESULTS / "server_memory.md").write_text("\n".join(lines) + "\n")
    plot(rows)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODELS), figsize=(10, 3.6))
    for ax, model in zip(axes, MODELS, strict=True):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            pts = [
                (r["clients"], r["growth_models"])
                for r in rows
                if r["model"] == model and r["mode"] == mode
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=mode)
        ax.set_title(model)
        ax.set_xlabel("clients per round")
        ax.set_ylabel("peak RSS growth (model sizes)")
        ax.set_xscale("log")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "server_memory.png", dpi=120)


if __name__ == "__main__":
    main()
