"""Distributed DP (Skellam under SecAgg) against central DP at equal ε on the default task,
written to benchmarks/results/distributed_dp.json and .md.

Each configuration runs the default Shakespeare federation for ``--rounds`` rounds with
``--fraction`` of the clients per round, its noise multiplier calibrated so that the
planned rounds spend exactly ``--epsilon`` (δ = 1e-5) by its own accountant: central DP's
(dp-accounting, Poisson-subsampled Gaussian) or distributed DP's (subsampled Skellam with
the rounding bound; :mod:`fedgpt.privacy.skellam_accountant`). Distributed DP runs at the
default SecAgg threshold (noise sized for t + 1 of the cohort) and at
``--high-threshold``, whose noise is sized for nearly the whole cohort.
Target: distributed DP's final test accuracy within 10 % of central DP's.

Usage: python benchmarks/distributed_dp.py [--rounds 200] [--fraction 0.05] [--epsilon 8]
       [--only central|default|high ...] [--results NAME] [--set KEY=VALUE ...]
       python benchmarks/distributed_dp.py --rows LOG [--rows LOG ...]  (the table from the
       JSON rows that runs printed, e.g. configurations run in parallel with --only)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fedgpt.build import load_run_config
from fedgpt.experiment import run_experiment

RESULTS = Path(__file__).parent / "results"


def configurations(high: float) -> dict[str, tuple[str, list[str]]]:
    secagg = ['privacy.mode="distributed_dp"', 'privacy.secure_aggregation="secagg"']
    return {
        "central": ("central_dp", ['privacy.mode="central_dp"']),
        "default": ("distributed_dp", secagg),
        "high": (f"distributed_dp, threshold {high}",
                 [*secagg, f"privacy.secagg_threshold={high}"]),
    }  # fmt: skip


def run(name: str, extra: list[str], args, out: Path) -> dict:
    over = [
        f'out_dir="{out}"', "baselines.enabled=false", f"federation.rounds={args.rounds}",
        f"federation.fraction={args.fraction}", f"federation.eval_every={args.rounds}",
        "privacy.noise_multiplier=0", f"privacy.target_epsilon={args.epsilon}", *extra,
        *args.set,
    ]  # fmt: skip
    cfg = load_run_config(None, over)
    t = time.perf_counter()
    s = run_experiment(cfg, out / name.replace(" ", "_").replace(",", ""))
    seconds = time.perf_counter() - t
    return {
        "configuration": name,
        "epsilon": s["privacy"]["epsilon"],
        "noise_multiplier": s["privacy"]["noise_multiplier"],
        "test_accuracy": s["federated"]["test_accuracy"],
        "test_loss": s["federated"]["test_loss"],
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--high-threshold", type=float, default=0.9)
    ap.add_argument(
        "--only",
        action="append",
        choices=["central", "default", "high"],
        help="run only these configurations (repeatable; default: all three)",
    )
    ap.add_argument("--results", default="distributed_dp", help="results file name")
    ap.add_argument("--set", action="append", default=[], help="a configuration override")
    ap.add_argument("--rows", action="append", default=[], help="rows printed by earlier runs")
    args = ap.parse_args()
    rows = [json.loads(x) for f in args.rows for x in Path(f).read_text().splitlines()
            if x.startswith('{"configuration"')]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for key, (name, extra) in configurations(args.high_threshold).items():
            if (args.only and key not in args.only) or args.rows:
                continue
            rows.append(run(name, extra, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    base = next((r["test_accuracy"] for r in rows if r["configuration"] == "central_dp"), None)
    for r in rows:
        r["accuracy_vs_central"] = r["test_accuracy"] / base if base else None
    result = {"rounds": args.rounds, "fraction": args.fraction, "target_epsilon": args.epsilon,
              "overrides": args.set, "rows": rows}  # fmt: skip
    out = RESULTS / args.results
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Default task, {args.rounds} rounds, fraction {args.fraction}, target ε = "
        f"{args.epsilon}, δ = 1e-5 (`python benchmarks/distributed_dp.py`).",
        "",
        "| configuration | ε | z | test accuracy | vs central | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = "" if r["accuracy_vs_central"] is None else f"{r['accuracy_vs_central']:.3f}"
        lines.append(
            f"| {r['configuration']} | {r['epsilon']:.3f} | {r['noise_multiplier']:.4f} | "
            f"{r['test_accuracy']:.4f} | {ratio} | {r['seconds']:.0f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
