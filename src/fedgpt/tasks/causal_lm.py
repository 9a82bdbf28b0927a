"""Next-token prediction (causal language modelling): windows of ``seq_len + 1``
tokens, the mean cross-entropy of each token given the ones before it,

    L(w) = −(1/|B|·T) Σ_b Σ_t log p_w(x_{b,t+1} | x_{b,≤t}),

and next-token accuracy (the arg-max is the true next token). Every token after a
client's first is an example (n_k = tokens − 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedgpt.models.device import forward
from fedgpt.tasks.base import TASKS, Task
from fedgpt.tasks.windows import eval_windows, record_windows, sample_windows


def logits_of(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's logits (B, T, V); position ids are passed per sample, which
    per-sample-gradient engines need."""
    pos = torch.arange(inputs.shape[1]).expand_as(inputs)
    return forward(model, input_ids=inputs, position_ids=pos).logits


def lm_loss(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``windows`` (inputs ``[:, :-1]``, targets ``[:, 1:]``)."""
    inputs, targets = windows[:, :-1], windows[:, 1:]
    logits = logits_of(model, inputs).float()
    targets = targets.to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def evaluate_tokens(
    model: torch.nn.Module, tokens: torch.Tensor, seq_len: int, max_tokens: int = 0
) -> tuple[float, int, int]:
    """(sum of next-token losses, correct predictions, predicted tokens) on ``tokens``."""
    if max_tokens and tokens.numel() > max_tokens:
        tokens = tokens[:max_tokens]
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for windows in eval_windows(tokens, seq_len):
        for chunk in windows.split(64):
            inputs, targets = chunk[:, :-1], chunk[:, 1:]
            flat_logits = logits_of(model, inputs).float()
            flat_logits = flat_logits.reshape(-1, flat_logits.shape[-1])
            targets = targets.to(flat_logits.device)
            loss_sum += float(F.cross_entropy(flat_logits, targets.reshape(-1), reduction="sum"))
            correct += int((flat_logits.argmax(-1) == targets.reshape(-1)).sum())
            count += targets.numel()
    return loss_sum, correct, count


@TASKS.register("causal_lm")
class CausalLM(Task):
    accuracy = "next-token accuracy"
    generates = True

    def batch(self, data, batch_size, seq_len, gen):
        return sample_windows(data, batch_size, seq_len, gen)

    def loss(self, model, batch):
        return lm_loss(model, batch)

    def metric_sums(self, model, data, seq_len, max_tokens=0):
        return evaluate_tokens(model, data, seq_len, max_tokens)

    def num_examples(self, data):
        return int(data.numel() - 1)

    def records(self, data, seq_len):
        return record_windows(data, seq_len)

    def split_tail(self, data, fraction, seq_len):
        n_val = max(seq_len + 1, int(round(data.numel() * fraction)))
        n_val = min(n_val, data.numel() // 2)
        return data[:-n_val], data[-n_val:]
