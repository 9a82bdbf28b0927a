"""Heterogeneous devices, distillation, attention fusion and robust aggregation on
Shakespeare, each against all-``full`` FedAvg at equal rounds (same seed, same clients,
same client sampling).

Groups (one or more names on the command line; none = all):

* ``tiers``: 30 % full / 40 % top_blocks:2 / 30 % embeddings (4-block model) vs all full;
  accuracy ratio and upload bytes.
* ``tiers2``: the same mix on the default 2-block model (there top_blocks:2 leaves out
  only the embeddings).
* ``fusion``: a strongly non-IID setting (one speaking role per client, 20 local steps per
  round, 5 clients per round: strong client drift); FedAvg vs FedDF, hybrid (λ = 0.5),
  learned attention, FedAtt and FedMD (logits only; its own row reports the clients'
  own models too).
* ``robust``: 20 % of the clients flip the sign of their update (×4), 10 clients per
  round; clean FedAvg vs attacked FedAvg, median, trimmed mean (β = 0.2 and 0.3), Krum (f = 2),
  Multi-Krum (f = 3, m = 7), norm bounding (M = 1), median after
  bucketing in pairs; median without attack.

Results: benchmarks/results/heterogeneity.jsonl (one line per run, appended) and
benchmarks/results/heterogeneity.md (the latest run of each name).

Usage: python benchmarks/heterogeneity.py [GROUP or RUN NAME ...] [--rounds R]
(R = 100 by default; about 1–3 minutes per run on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fedgpt.config import load_config
from fedgpt.experiment import run_experiment

RESULTS = Path(__file__).parent / "results"
PUBLIC = 'data.public_plays=["hamlet", "macbeth"]'  # public text; no client holds them
COMMON = ["baselines.enabled=false", PUBLIC, "federation.eval_max_chars=2000"]

NONIID = ["client.local_steps=20"]
ROBUST = ["federation.min_clients=10", "federation.fraction=0.001"]
ATTACK = ["attack.fraction=0.2", 'attack.kind="sign_flip"', "attack.scale=4"]
DEEP = ["model.n_layer=4"]

GROUPS: dict[str, dict[str, list[str]]] = {
    "tiers": {
        "tiers/all-full": DEEP,
        "tiers/mix-30-40-30": [
            *DEEP,
            'devices.mix={full = 0.3, "top_blocks:2" = 0.4, embeddings = 0.3}',
        ],
    },
    "tiers2": {  # the default 2-block model: top_blocks:2 = every block and the head
        "tiers2/all-full": [],
        "tiers2/mix-30-40-30": [
            'devices.mix={full = 0.3, "top_blocks:2" = 0.4, embeddings = 0.3}',
        ],
    },
    "fusion": {
        "fusion/fedavg": NONIID,
        "fusion/feddf": [*NONIID, 'federation.distill="feddf"'],
        "fusion/hybrid-0.5": [*NONIID, "federation.hybrid_lambda=0.5"],
        "fusion/attention": [*NONIID, 'federation.aggregator="attention"'],
        "fusion/fedatt": [*NONIID, 'federation.aggregator="fedatt"'],
        "fusion/fedmd": [*NONIID, 'federation.distill="fedmd"', "federation.distill_steps=20"],
    },
    "robust": {
        "robust/clean-fedavg": ROBUST,
        "robust/clean-median": [*ROBUST, 'federation.aggregator="median"'],
        "robust/attacked-fedavg": [*ROBUST, *ATTACK],
        "robust/attacked-median": [*ROBUST, *ATTACK, 'federation.aggregator="median"'],
        "robust/attacked-median-bucket-2": [
            *ROBUST,
            *ATTACK,
            'federation.aggregator={kind = "median", bucket = 2}',
        ],
        "robust/attacked-trimmed": [
            *ROBUST,
            *ATTACK,
            'federation.aggregator={kind = "trimmed_mean", trim = 0.2}',
        ],
        "robust/attacked-trimmed-0.3": [
            *ROBUST,
            *ATTACK,
            'federation.aggregator={kind = "trimmed_mean", trim = 0.3}',
        ],
        "robust/attacked-norm-bound-1": [
            *ROBUST,
            *ATTACK,
            'federation.aggregator={kind = "norm_bound", bound = 1.0}',
        ],
        "robust/attacked-krum": [
            *ROBUST,
            *ATTACK,
            'federation.aggregator={kind = "krum", f = 2}',
        ],
        "robust/attacked-multi-krum": [
            *ROBUST,
            *ATTACK,
            'federation.aggregator={kind = "multi_krum", f = 3, m = 7}',
        ],
    },
}


def run_one(name: str, sets: list[str], rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            None,
            [*COMMON, *sets, f"federation.rounds={rounds}", f"federation.eval_every={rounds}"],
        )
        t0 = time.perf_counter()
        summary = run_experiment(cfg, Path(tmp) / "run")
        rows = [json.loads(x) for x in (Path(tmp) / "run/metrics.jsonl").read_text().splitlines()]
    out = {
        "name": name,
        "rounds": rounds,
        "sets": sets,
        "test_accuracy": summary["federated"]["test_accuracy"],
        "test_loss": summary["federated"]["test_loss"],
        "bytes_up_per_round": sum(r["bytes_up"] for r in rows) / len(rows),
        "bytes_down_per_round": sum(r["bytes_down"] for r in rows) / len(rows),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    own = [r["personal_accuracy"] for r in rows[-10:] if "personal_accuracy" in r]
    if own:
        out["client_own_accuracy_last10"] = sum(own) / len(own)
    return out


def write_table(results: list[dict]) -> None:
    latest: dict[str, dict] = {}
    for r in results:
        latest[r["name"]] = r
    order = [n for g in GROUPS.values() for n in g]
    latest = dict(
        sorted(latest.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    )
    lines = [
        "# Heterogeneity benchmark (latest run of each configuration)",
        "",
        "Reproduce: `python benchmarks/heterogeneity.py [tiers|fusion|robust] --rounds R`.",
        "Ratios are against the first row of the group (same rounds, seed and clients).",
        "Seconds are wall time on a 2-core machine shared with other work: noisy.",
        "",
        "| run | rounds | test accuracy | ratio | up / round | down / round | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    refs: dict[str, float] = {}
    for name, r in latest.items():
        group = name.split("/")[0]
        refs.setdefault(group, r["test_accuracy"])
        extra = (
            f" (clients' own models: {r['client_own_accuracy_last10']:.4f})"
            if "client_own_accuracy_last10" in r
            else ""
        )
        lines.append(
            f"| {name} | {r['rounds']} | {r['test_accuracy']:.4f}{extra} | "
            f"{r['test_accuracy'] / refs[group]:.3f} | {r['bytes_up_per_round'] / 2**20:.2f} MiB"
            f" | {r['bytes_down_per_round'] / 2**20:.2f} MiB | {r['seconds']} |"
        )
    (RESULTS / "heterogeneity.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("groups", nargs="*", help=f"groups to run: {', '.join(GROUPS)}")
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    names = {n: sets for g in GROUPS.values() for n, sets in g.items()}
    unknown = [g for g in args.groups if g not in GROUPS and g not in names]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; expected {list(GROUPS)} or a run name")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "heterogeneity.jsonl"
    todo = [
        (name, sets)
        for g in args.groups or list(GROUPS)
        for name, sets in (GROUPS[g].items() if g in GROUPS else [(g, names[g])])
    ]
    for name, sets in todo:
        r = run_one(name, sets, args.rounds)
        print(json.dumps(r), flush=True)
        with path.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        write_table([json.loads(x) for x in path.read_text().splitlines()])


if __name__ == "__main__":
    main()
