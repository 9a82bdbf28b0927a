"""The same federation on CUDA and on the CPU: one short check for a machine with a GPU.

Each case runs twice from the same seed, once with ``runtime.device = "cpu"`` and once with
``"cuda"``, and must end at the same place up to the kernels' rounding: the final test loss
within ``--loss-tol`` (relative) and the final trainable weights within ``--weight-tol`` of
the distance they moved from the start. Cases: LoRA FedAvg (float32 and bfloat16), FedProx
with FedAdam, SecAgg, central DP, local DP and record-level DP-SGD (seeded noise, so both
devices draw the same), and the classification task on the Pima records. The results, with
seconds per run on each device, go to benchmarks/results/gpu_check.json and .md; the exit
status is 1 when a case disagrees and 2 when there is no CUDA device (nothing written).

Usage: python benchmarks/gpu_check.py [--model smollm2-135m|DIR] [--rounds 3] [--only NAME]
       [--device cuda:N]   (--device cpu: a dry run of the script itself, nothing written)
       (default model: the built-in 2-layer character GPT-2 with LoRA; no download)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedgpt.build import prepare
from fedgpt.config import load_config
from fedgpt.experiment import run_experiment
from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint

RESULTS = Path(__file__).parent / "results"
BASE = [
    'data.plays=["lear"]', "data.min_chars=4000", "model.n_layer=2", "model.n_embd=32",
    "model.n_head=2", "model.context=64", "model.lora.enabled=true", "model.lora.r=4",
    "client.local_steps=3", "client.batch_size=8", "client.seq_len=32", "federation.fraction=0.2",
    "federation.min_clients=3", "federation.eval_every=1", "federation.eval_max_chars=2000",
    "baselines.enabled=false", "report.prompts=[]",
]  # fmt: skip
NOISE = ["privacy.reproducible_noise=true"]
CASES = {
    "fedavg": [],
    "fedavg_bf16": ['model.dtype="bfloat16"'],
    "fedprox_fedadam": ["client.prox_mu=0.01", 'federation.server_optimizer="fedadam"',
                        "federation.server_lr=0.01"],
    "secagg": ['privacy.secure_aggregation="secagg"'],
    "central_dp": ['privacy.mode="central_dp"', "privacy.noise_multiplier=0.5", *NOISE],
    "local_dp": ['privacy.mode="local_dp"', "privacy.noise_multiplier=0.5", *NOISE],
    "dp_sgd": ['privacy.mode="dp_sgd"', "privacy.noise_multiplier=1.0", *NOISE],
    "classification": ['data.source="pima"', 'task.kind="classification"', "client.seq_len=96",
                       "model.context=128"],
}  # fmt: skip


def run_case(name: str, extra: list[str], device: str, args, root: Path) -> dict:
    model = [f'model.path="{args.model}"'] if args.model else []
    over = [*BASE, *model, f"federation.rounds={args.rounds}", f'runtime.device="{device}"',
            f'out_dir="{root}"', *extra]  # fmt: skip
    run = root / f"{name}-{device}"
    start = time.perf_counter()
    cfg = load_config(None, over)
    summary = run_experiment(cfg, run)
    seconds = time.perf_counter() - start
    first = prepare(cfg).init.cpu()  # the run's starting weights (seeded)
    return {
        "device": summary["model"]["device"],
        "seconds": seconds,
        "test_loss": summary["federated"]["test_loss"],
        "weights": load_checkpoint(latest_checkpoint(run / "checkpoints")).weights,
        "first": first,
    }


def compare(cpu: dict, gpu: dict, args) -> dict:
    moved = float((cpu["weights"] - cpu["first"]).norm())
    gap = float((cpu["weights"] - gpu["weights"]).norm())
    rel_loss = abs(cpu["test_loss"] - gpu["test_loss"]) / abs(cpu["test_loss"])
    rel_w = gap / max(moved, 1e-12)
    return {
        "cpu_device": cpu["device"],
        "gpu_device": gpu["device"],
        "cpu_test_loss": cpu["test_loss"],
        "gpu_test_loss": gpu["test_loss"],
        "loss_rel_diff": rel_loss,
        "weights_rel_diff": rel_w,
        "cpu_seconds": cpu["seconds"],
        "gpu_seconds": gpu["seconds"],
        "agree": rel_loss <= args.loss_tol and rel_w <= args.weight_tol,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="model.path (default: the built-in char GPT-2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", action="append", choices=sorted(CASES), default=[])
    ap.add_argument("--loss-tol", type=float, default=0.02)
    ap.add_argument("--weight-tol", type=float, default=0.05)
    ap.add_argument(
        "--device",
        default="cuda",
        help="the device checked against the CPU "
        "(cpu: a dry run of this script, which must agree exactly)",
    )
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check", file=sys.stderr)
        return 2
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or CASES:
            cpu = run_case(name, CASES[name], "cpu", args, Path(tmp))
            gpu = run_case(name, CASES[name], args.device, args, Path(tmp) / "b")
            rows[name] = compare(cpu, gpu, args)
            r = rows[name]
            verdict = "ok" if r["agree"] else "DIFFERS"
            print(
                f"{name:16} loss cpu {r['cpu_test_loss']:.4f} {args.device} "
                f"{r['gpu_test_loss']:.4f} weights {r['weights_rel_diff']:.2e}  {verdict}"
            )
    meta = {
        "gpu": torch.cuda.get_device_name(0) if args.device != "cpu" else "cpu (dry run)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": args.model or "built-in char GPT-2 2x32, LoRA r=4",
        "rounds": args.rounds,
        "loss_tol": args.loss_tol,
        "weight_tol": args.weight_tol,
    }
    if args.device == "cpu":
        return 0 if all(r["agree"] for r in rows.values()) else 1
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu_check.json").write_text(json.dumps({**meta, "cases": rows}, indent=2) + "\n")
    lines = [f"# CUDA against CPU ({meta['gpu']}, torch {meta['torch']}, {meta['model']})", "",
             "| case | CPU loss | CUDA loss | loss diff | weight diff | CPU s | CUDA s | agree |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['cpu_test_loss']:.4f} | {r['gpu_test_loss']:.4f} | "
            f"{r['loss_rel_diff']:.1e} | {r['weights_rel_diff']:.1e} | {r['cpu_seconds']:.1f} | "
            f"{r['gpu_seconds']:.1f} | {'yes' if r['agree'] else 'NO'} |"
        )
    (RESULTS / "gpu_check.md").write_text("\n".join(lines) + "\n")
    return 0 if all(r["agree"] for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
