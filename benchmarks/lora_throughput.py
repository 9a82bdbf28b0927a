"""Client training throughput on a pretrained LLM with LoRA: FedGPT's client step
(:func:`fedgpt.client.trainer.local_update`: flat parameter views, one contiguous gradient)
against a plain PEFT training loop (``model(input_ids, labels).loss``, ``backward``,
``AdamW.step``) on the very same batches, written to benchmarks/results/lora_throughput.json
and .md. Target: FedGPT ≥ 0.9× the plain loop's tokens/s.

Both start from the same LoRA model (SmolLM2-135M-Instruct by default, LoRA r = 8 on every
attention and MLP projection), draw the same ``--steps`` windows of Shakespeare per repeat,
and alternate (FedGPT, plain, FedGPT, plain, ...) so drift in the machine's speed hits both;
the figures are medians over ``--repeats``.

Usage: python benchmarks/lora_throughput.py [--model DIR] [--steps 8] [--repeats 5]
       [--batch 4] [--seq-len 128] [--threads 0]
       (without --model: `fedgpt model pull smollm2-135m`, from the cache after the first time)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fedgpt.build import load_clients
from fedgpt.client.trainer import local_update
from fedgpt.config import load_config
from fedgpt.models.build import add_lora, load_pretrained
from fedgpt.models.params import bind_flat
from fedgpt.tasks.windows import sample_windows

RESULTS = Path(__file__).parent / "results"


def plain_peft_loop(model, batches, lr: float) -> float:
    """Seconds for a plain PEFT loop over ``batches`` (windows of seq_len + 1 tokens:
    inputs and next-token targets, as FedGPT's): the reference."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)
    model.train()
    start = time.perf_counter()
    for b in batches:
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=b[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model:
        from fedgpt.models.pull import pull

        args.model = str(pull("smollm2-135m", "bf16", log=print))
    over = [f'model.path="{args.model}"', "model.lora.enabled=true", 'client.optimizer="adamw"',
            f"client.batch_size={args.batch}", f"client.seq_len={args.seq_len}",
            f"client.local_steps={args.steps}", "client.lr=1e-4"]  # fmt: skip
    cfg = load_config(None, over)
    text = "\n".join(c.train for c in load_clients(cfg))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        bundle = add_lora(load_pretrained(args.model), cfg.model)
    tokens = torch.from_numpy(bundle.codec.encode(text)).long()
    fm = bind_flat(bundle.model)  # as every FedGPT client holds its model
    w0 = fm.flat.clone()
    ours, plain = [], []
    for rep in range(args.repeats):
        gen = torch.Generator().manual_seed(rep)
        torch.randint(0, 2**62, (1,), generator=gen)  # local_update's dropout seed comes first
        batches = [sample_windows(tokens, args.batch, args.seq_len, gen) for _ in range(args.steps)]
        fm.load(w0)
        start = time.perf_counter()
        up = local_update(fm, w0, tokens, cfg.client, torch.Generator().manual_seed(rep), "b", 1)
        ours.append(time.perf_counter() - start)
        assert up.metrics["steps"] == args.steps, up
        fm.load(w0)
        plain.append(plain_peft_loop(bundle.model, batches, cfg.client.lr))
        print(f"repeat {rep + 1}/{args.repeats}: FedGPT {ours[-1]:.2f} s, plain {plain[-1]:.2f} s")
    tokens_per_run = args.steps * args.batch * args.seq_len
    med_ours, med_plain = statistics.median(ours), statistics.median(plain)
    trainable, total = bundle.counts()
    result = {
        "model": args.model,
        "trainable_params": trainable,
        "total_params": total,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "fedgpt_seconds": ours,
        "plain_seconds": plain,
        "fedgpt_tokens_per_s": tokens_per_run / med_ours,
        "plain_tokens_per_s": tokens_per_run / med_plain,
        "ratio": med_plain / med_ours,
        "command": "python benchmarks/lora_throughput.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "model"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lora_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "lora_throughput.md").write_text(
        "| model | LoRA params | batch × seq | FedGPT tokens/s | plain PEFT tokens/s | ratio |\n"
        "|:--|--:|--:|--:|--:|--:|\n"
        f"| {Path(args.model).name} | {trainable:,} of {total:,} | {args.batch} × {args.seq_len} "
        f"| {result['fedgpt_tokens_per_s']:.0f} | {result['plain_tokens_per_s']:.0f} "
        f"| {result['ratio']:.3f} |\n\nMedians of {args.repeats} repeats of {args.steps} steps, "
        f"{result['threads']} threads. `{result['command']}`\n"
    )
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_seconds")}, indent=2))


if __name__ == "__main__":
    main()
