"""Federated vs centralized vs local-only for the configurations compared while choosing
FedGPT's defaults. Each configuration is a full ``fedgpt run`` with baselines (so every
ratio is measured within one run, on one machine state). Results are appended to
benchmarks/results/tuning.jsonl and summarised in benchmarks/results/tuning.md.

Usage: python benchmarks/tuning.py [NAME ...]   (no names: all configurations; slow,
about 3-6 minutes each on 2 cores)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from fedgpt.config import load_config
from fedgpt.experiment import run_experiment

RESULTS = Path(__file__).parent / "results"

FIRST = [
    "model.n_layer=4",
    "model.n_embd=128",
    "model.n_head=4",
    "federation.rounds=20",
    "federation.fraction=0.025",
    "federation.server_optimizer='fedavg'",
]
SMALL_K11 = ["federation.fraction=0.025", "federation.rounds=100"]
FEW = ["federation.fraction=0.001"]
CONFIGS: dict[str, list[str]] = {
    # the first defaults: 4x128 model, 11 clients x 10 AdamW steps x 20 rounds, FedAvg
    "4x128-k11-s10-r20-fedavg": FIRST,
    "4x128-k11-s10-r20-fedavgm0.9": [
        *FIRST,
        "federation.server_optimizer='fedavgm'",
        "federation.server_momentum=0.9",
    ],
    "4x128-k2-s50-r20-fedavg": [*FIRST, *FEW, "client.local_steps=50"],
    "4x128-k4-s5-r100-fedavg": [
        *FIRST,
        *FEW,
        "federation.rounds=100",
        "federation.min_clients=4",
        "client.local_steps=5",
    ],
    # the 2x64 model trains 5x faster per step: more rounds in the same time
    "2x64-k11-s10-r100-fedavg": [*SMALL_K11, "federation.server_optimizer='fedavg'"],
    "2x64-k11-s10-r100-fedavgm0.5": SMALL_K11,
    "2x64-k11-s10-r100-fedavgm0.7": [*SMALL_K11, "federation.server_momentum=0.7"],
    "2x64-k11-s10-r100-fedadam0.01": [
        *SMALL_K11,
        "federation.server_optimizer='fedadam'",
        "federation.server_lr=0.01",
    ],
    "2x64-k5-s10-r200-fedavg": [
        "federation.rounds=200",
        "client.local_steps=10",
        "federation.server_optimizer='fedavg'",
    ],
    "2x64-k5-s10-r200-fedavgm0.5": ["federation.rounds=200", "client.local_steps=10"],
    "2x64-k3-s10-r330-fedavgm0.5": [
        *FEW,
        "federation.min_clients=3",
        "federation.rounds=330",
        "client.local_steps=10",
    ],
    "2x64-k5-s3-r667-fedavgm0.5": ["federation.rounds=667", "client.local_steps=3"],
    "2x64-k3-s5-r667-fedavgm0.5": [*FEW, "federation.min_clients=3", "federation.rounds=667"],
    "2x64-k5-s5-r400-fedavgm0.5-keepstate": ["client.keep_optimizer_state=true"],
    "defaults": [],  # 2x64, 5 clients x 5 AdamW steps x 400 rounds, FedAvgM 0.5
}


def run(name: str, overrides: list[str]) -> dict:
    cfg = load_config(None, [o.replace("'", '"') for o in overrides] + ["baselines.enabled=true"])
    rounds = cfg.federation.rounds
    cfg = cfg.model_copy(
        update={"federation": cfg.federation.model_copy(update={"eval_every": rounds})}
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        s = run_experiment(cfg, Path(tmp) / name)
    fed, b = s["federated"], s["baselines"]
    c, lo = b["centralized"], b["local_only"]
    return {
        "name": name,
        "overrides": overrides,
        "federated_accuracy": fed["test_accuracy"],
        "federated_loss": fed["test_loss"],
        "centralized_accuracy": c["test_accuracy"],
        "centralized_loss": c["test_loss"],
        "ratio": fed["test_accuracy"] / c["test_accuracy"],
        "local_only_accuracy": lo["test_accuracy_mean"],
        "federated_on_local_clients": lo["federated_accuracy_same_clients"],
        "steps": c["steps"],
        "federated_seconds": s["federated_seconds"],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    names = sys.argv[1:] or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        r = run(name, CONFIGS[name])
        with (RESULTS / "tuning.jsonl").open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        print(
            f"{name}: federated {r['federated_accuracy']:.4f}  centralized "
            f"{r['centralized_accuracy']:.4f}  ratio {r['ratio']:.3f}  local-only "
            f"{r['local_only_accuracy']:.4f}  ({r['seconds']:.0f} s)",
            flush=True,
        )
    rows = [json.loads(x) for x in (RESULTS / "tuning.jsonl").read_text().splitlines() if x]
    lines = [
        "| configuration | steps | federated acc | centralized acc | ratio | local-only acc |"
        " federated s |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['federated_accuracy']:.4f} | "
            f"{r['centralized_accuracy']:.4f} | {r['ratio']:.3f} | "
            f"{r['local_only_accuracy']:.4f} | {r['federated_seconds']:.0f} |"
        )
    (RESULTS / "tuning.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
