"""Diabetes across clinics, measured: the Pima records (five clinics by age band), for the
classical reference (logistic regression on the raw measurements) and the SmolLM2-135M
LoRA classifier (the record as text, " yes"/" no" as its next token), each as single site,
centralized, FedAvg, FedProx + FedAdam, FedAvg + SecAgg and DP-SGD at ε = 1 and ε = 8 per
site, and client-level DP at ε = 8 (noise sized to hide a whole clinic, over five), over
several seeds, with 95 % intervals (benchmarks/_seed_table.py). Writes
benchmarks/results/medical.{json,md,png}.

Usage: python benchmarks/medical.py [--models logistic,smollm2] [--seeds 5] [--configs a,b]
       (smollm2 needs `fedgpt model pull smollm2-135m`; about 30 minutes a seed on 2 cores;
       logistic, about 2 minutes for 5 seeds)
"""

from __future__ import annotations

import argparse

from _seed_table import client_dp, dp_sgd, run_table, write

from fedgpt.data.pima import pima_clients

CLAIMS = ["diabetes AUC: centralized 0.912, classic FL 0.843, FedGPT 0.891 (ten hospitals)"]
COMMON = ['data.source="pima"', 'data.partition="natural"', "federation.fraction=1.0",
          "federation.min_clients=2", "report.prompts=[]"]  # fmt: skip
MODELS = {
    "logistic": [*COMMON, 'task.kind="tabular"', 'model.family="logistic"', "client.lr=0.05",
                 "client.local_steps=5", "client.batch_size=16", "federation.rounds=30",
                 "federation.eval_every=30"],
    "smollm2": [*COMMON, 'task.kind="classification"', 'model.path="smollm2-135m"',
                "model.lora.enabled=true", "model.lora.r=8", "model.lora.alpha=16",
                "client.lr=0.0005", "client.batch_size=4", "client.seq_len=64",
                "client.local_steps=3", "federation.rounds=6", "federation.eval_every=6",
                "baselines.local_max_steps=18", "baselines.lr=0.0005"],
}  # fmt: skip


FEWEST = min(len(c.train) for c in pima_clients())  # the smallest clinic's training records


CONFIGS = {
    "fedavg": ['federation.server_optimizer="fedavg"'],
    "fedprox_fedadam": ["client.prox_mu=0.01", 'federation.server_optimizer="fedadam"',
                        "federation.server_lr=0.03"],
    "secagg": ['federation.server_optimizer="fedavg"', 'privacy.secure_aggregation="secagg"'],
    "dp_sgd_eps8": dp_sgd(MODELS, 8.0, FEWEST),
    "dp_sgd_eps1": dp_sgd(MODELS, 1.0, FEWEST),
    "central_dp": client_dp(MODELS, 8.0, sites=5, clip=0.5),
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="logistic,smollm2")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args()
    models = {m: MODELS[m] for m in args.models.split(",")}
    configs = {c: CONFIGS[c] for c in args.configs.split(",")}
    table = run_table("Diabetes (Pima, 5 clinics)", models, configs, list(range(args.seeds)))
    cmd = f"python benchmarks/medical.py --models {args.models} --seeds {args.seeds}"
    cmd += f" --configs {args.configs}" if args.configs != ",".join(CONFIGS) else ""
    meta = {"task": "pima diabetes, natural partition", "seeds": args.seeds}
    write("medical", "Diabetes across five clinics (Pima)", table, meta, CLAIMS, cmd)


if __name__ == "__main__":
    main()
