"""Update compression on the default task, written to benchmarks/results/compression.json
(and .md).

The same federation (the default Shakespeare job with --rounds rounds, evaluation after
the last) with every ``client.compression`` on the full model, and LoRA adapters alone
and with 8-bit QSGD: bytes sent up per round (what travelled, counted by the server) and
final test accuracy, each against full-model float32 FedAvg of the same run.
Targets: LoRA + qsgd8 at least 100x fewer bytes up than full float32, final accuracy
within 1 % (relative) of it.

The default task's model is a small character GPT-2 trained from scratch, where LoRA
adapters alone cannot learn what full training does; the pretrained case is SmolLM2-135M
(``fedgpt model pull smollm2-135m``) with ``--smollm2``: the Lear roles, three clients per
round, short local training, and only the three cases the target compares, written to
compression_smollm2.json / .md.

Usage: python benchmarks/compression.py [--rounds 20] [--smollm2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from fedgpt.config import load_config
from fedgpt.experiment import run_experiment

RESULTS = Path(__file__).parent / "results"
LORA = ["model.lora.enabled=true"]
SMOLLM2 = [
    'model.path="smollm2-135m"', 'data.plays=["lear"]', "federation.fraction=0.1",
    "federation.min_clients=3", "client.local_steps=2", "client.batch_size=2",
    "client.seq_len=64", "client.optimizer=\"adamw\"", "client.lr=0.0005",
    "federation.eval_max_chars=4000", "federation.server_optimizer=\"fedavg\"",
]  # fmt: skip
SMOLLM2_CASES = ("full float32", "LoRA float32", "LoRA qsgd8")
CASES = {
    "full float32": [],
    "full fp16": ['client.compression="fp16"'],
    "full bf16": ['client.compression="bf16"'],
    "full qsgd8": ['client.compression="qsgd8"'],
    "full qsgd4": ['client.compression="qsgd4"'],
    "full top-1%": ['client.compression="topk"'],
    "LoRA float32": LORA,
    "LoRA qsgd8": [*LORA, 'client.compression="qsgd8"'],
}


def one(overrides: list[str], rounds: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(
            None,
            [f"federation.rounds={rounds}", f"federation.eval_every={rounds}",
             "baselines.enabled=false", *overrides, *extra, f'out_dir="{out}"', 'name="c"'],
        )  # fmt: skip
        summary = run_experiment(cfg, Path(out) / "c")
        rows = [json.loads(x) for x in (Path(out) / "c" / "metrics.jsonl").read_text().splitlines()]
    up = [r["bytes_up"] for r in rows if "bytes_up" in r]
    return {
        "bytes_up_per_round": sum(up) / len(up),
        "test_accuracy": summary["federated"]["test_accuracy"],
        "test_loss": summary["federated"]["test_loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--smollm2", action="store_true", help="SmolLM2-135M, the three cases")
    args = ap.parse_args()
    rows, extra = {}, [*(SMOLLM2 if args.smollm2 else []), *args.set]
    for name, overrides in CASES.items():
        if args.smollm2 and name not in SMOLLM2_CASES:
            continue
        rows[name] = one(overrides, args.rounds, extra)
        print(name, rows[name], flush=True)
    ref = rows["full float32"]
    for r in rows.values():
        r["bytes_fewer"] = ref["bytes_up_per_round"] / r["bytes_up_per_round"]
        r["accuracy_relative"] = r["test_accuracy"] / ref["test_accuracy"]
    lq = rows["LoRA qsgd8"]
    out = {
        "rounds": args.rounds,
        "set": extra,
        "rows": rows,
        "targets": {"lora_qsgd8_bytes_fewer": 100, "lora_qsgd8_accuracy_relative": 0.99},
        "met": {"bytes": lq["bytes_fewer"] >= 100, "accuracy": lq["accuracy_relative"] >= 0.99},
    }
    RESULTS.mkdir(exist_ok=True)
    stem = "compression_smollm2" if args.smollm2 else "compression"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["| updates | bytes up per round | fewer than float32 | test accuracy | relative |",
             "| --- | --: | --: | --: | --: |"]  # fmt: skip
    lines += [
        f"| {n} | {r['bytes_up_per_round']:,.0f} | {r['bytes_fewer']:.1f}x | "
        f"{r['test_accuracy']:.4f} | {r['accuracy_relative']:.3f} |"
        for n, r in rows.items()
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
