"""Overhead of the federation machinery, written to benchmarks/results/overhead.json.

1. Share of round wall time spent outside client training and evaluation: a real run
   (default model and data, evaluation only after the last round so that rounds are not
   dominated by it) through ``run_experiment``; per round, wall time between round ends
   minus the trainers' own measured seconds minus evaluation seconds.
   What remains is sampling, messaging, validation, aggregation, the server step,
   checkpointing and logging. Target: <= 5 %.
2. The client trainer's tokens/s against a plain PyTorch loop (same model, same batches,
   AdamW, gradient clipping), medians of repeated runs. Target: >= 0.9x.

Usage: python benchmarks/overhead.py [--rounds 6] [--repeats 5] [--steps 30] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fedgpt.client.trainer import local_update
from fedgpt.config import load_config
from fedgpt.experiment import Hooks, prepare, run_experiment
from fedgpt.models.build import build_char_gpt2
from fedgpt.tasks.windows import sample_windows

RESULTS = Path(__file__).parent / "results" / "overhead.json"


class Timer(Hooks):
    def __init__(self):
        self.ends: list[float] = []
        self.rows: list[dict] = []

    def round_done(self, row: dict) -> None:
        self.ends.append(time.perf_counter())
        self.rows.append(row)


def round_overhead(rounds: int, overrides: list[str] = ()) -> dict:
    cfg = load_config(
        None,
        [
            f"federation.rounds={rounds}",
            "baselines.enabled=false",
            f"federation.eval_every={rounds}",
            *overrides,
        ],
    )
    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        # the trainers' own seconds are read back from the clients' metrics
        import fedgpt.federation.loop as loop

        seconds: list[float] = []
        orig = loop.FederatedServer.run_round

        def run_round(self, state):
            new, result = orig(self, state)
            seconds.append(sum(m["seconds"] for m in result.client_metrics.values()))
            return new, result

        loop.FederatedServer.run_round = run_round
        try:
            start = time.perf_counter()
            timer.ends.append(start)
            run_experiment(cfg, Path(tmp) / "run", hooks=timer)
        finally:
            loop.FederatedServer.run_round = orig
    # the first interval also holds data loading and model building: skip it
    walls = [b - a for a, b in zip(timer.ends[1:-1], timer.ends[2:], strict=True)]
    train = seconds[1:]
    evals = [r["eval_seconds"] for r in timer.rows[1:]]
    other = [w - t - e for w, t, e in zip(walls, train, evals, strict=True)]
    return {
        "rounds_measured": len(walls),
        "round_wall_s": walls,
        "client_training_s": train,
        "evaluation_s": evals,
        "outside_share": sum(other) / sum(walls),
        "outside_share_median": statistics.median(o / w for o, w in zip(other, walls, strict=True)),
        "target_max": 0.05,
    }


def plain_loop(model, batches, lr: float, clip: float) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, foreach=True)
    model.train()
    start = time.perf_counter()
    for b in batches:
        inputs, targets = b[:, :-1], b[:, 1:]
        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return time.perf_counter() - start


def trainer_ratio(repeats: int, steps: int) -> dict:
    cfg = load_config(None, [f"client.local_steps={steps}"])
    prep = prepare(cfg)
    tokens = max((d.train for d in prep.data.values()), key=lambda t: t.numel())
    c = cfg.client
    plain_model = build_char_gpt2(cfg.model, (x.train for x in prep.clients), cfg.seed).model
    fm = prep.fm
    w0 = prep.init
    tok_per_run = steps * c.batch_size * c.seq_len
    ours, plain = [], []
    for r in range(repeats):
        seed = 1000 + r
        # the same batches local_update draws: it takes one draw for the dropout seed first
        gb = torch.Generator().manual_seed(seed)
        torch.randint(0, 2**62, (1,), generator=gb)
        batches = [sample_windows(tokens, c.batch_size, c.seq_len, gb) for _ in range(steps)]
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        local_update(fm, w0, tokens, c, g, "bench", 1)
        ours.append(tok_per_run / (time.perf_counter() - t0))
        plain.append(tok_per_run / plain_loop(plain_model, batches, c.lr, c.grad_clip))
    return {
        "steps": steps,
        "batch": [c.batch_size, c.seq_len],
        "trainer_tokens_per_s": statistics.median(ours),
        "plain_tokens_per_s": statistics.median(plain),
        "ratio": statistics.median(ours) / statistics.median(plain),
        "target_min": 0.9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="a configuration override for the measured run (repeatable)")  # fmt: skip
    args = ap.parse_args()
    result = {
        "torch_threads": torch.get_num_threads(),
        "overrides": args.overrides,
        "trainer": trainer_ratio(args.repeats, args.steps),
        "round": round_overhead(args.rounds, args.overrides),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    t, r = result["trainer"], result["round"]
    print(
        f"trainer: {t['trainer_tokens_per_s']:,.0f} tok/s vs plain loop "
        f"{t['plain_tokens_per_s']:,.0f} tok/s -> ratio {t['ratio']:.3f} (target >= 0.9)"
    )
    print(
        f"round time outside client training and evaluation: {100 * r['outside_share']:.2f} % "
        f"(median per round {100 * r['outside_share_median']:.2f} %, target <= 5 %)"
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
