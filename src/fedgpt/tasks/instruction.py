"""Instruction tuning: next-token prediction on the response only.

Each record is a prompt and a response; the model reads both, and the loss is the mean
cross-entropy of the response's tokens alone (the prompt is context, not a target:
"prompt masking", as in Ouyang et al. 2022, "Training language models to follow
instructions with human feedback", §3.5, and Alpaca-style supervised fine-tuning),

    L(w) = −(1/|A|) Σ_{(b,t) ∈ A} log p_w(x_{b,t+1} | x_{b,≤t}),   A = the response tokens.

Reported: that loss and the accuracy of the response's tokens (arg-max = the true token).
Labelled records of any data source become instructions with their class as the response.

A client's records are one int64 tensor, one row per record (right-padded):

    [ prompt and response tokens (seq_len + 1) | length | where the response starts ]

A long record keeps the last ``seq_len + 1 − response_tokens`` tokens of its prompt and the
first ``response_tokens`` of its response (the task's setting, ``task.response_tokens``): two
fixed budgets, so where a response starts never depends on the response. (Cutting prompt
and response together to the last ``seq_len + 1`` tokens would start a longer response
earlier: with absolute positions the model reads " yes" from " no" by where the answer
begins, and scores perfectly on test records it cannot classify.)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedgpt.errors import DataError
from fedgpt.tasks.base import TASKS
from fedgpt.tasks.causal_lm import logits_of
from fedgpt.tasks.classification import Classification


def encode_instructions(codec, part, seq_len: int, response_tokens: int) -> torch.Tensor:
    width = seq_len + 1
    if not 0 < response_tokens < width - 1:
        raise DataError(
            f"task.response_tokens = {response_tokens}: expected 1 to {width - 2} (below "
            f"client.seq_len = {seq_len})"
        )
    rows = torch.zeros((len(part), width + 2), dtype=torch.long)
    for i, (prompt, response) in enumerate(zip(part.prompts, part.responses, strict=True)):
        p = codec.encode(prompt)[-(width - response_tokens) :]
        r = codec.encode(response)[:response_tokens]
        if len(p) == 0 or len(r) == 0:
            what = "prompt" if len(p) == 0 else "response"
            raise DataError(f"instruction record {i + 1}: its {what} has no tokens")
        ids = torch.from_numpy(np.concatenate([p, r])).long()
        rows[i, : len(ids)] = ids
        rows[i, width] = len(ids)
        rows[i, width + 1] = len(p)
    return rows


def answer_logits(model, rows: torch.Tensor):
    """(logits, targets) of the response tokens of ``rows`` (N answer tokens in all)."""
    width = rows.shape[1] - 2
    lengths, starts = rows[:, width], rows[:, width + 1]
    tokens = rows[:, : int(lengths.max())]
    logits = logits_of(model, tokens[:, :-1]).float()
    pos = torch.arange(1, tokens.shape[1])[None, :]  # the position each target sits at
    mask = (pos >= starts[:, None]) & (pos < lengths[:, None])
    mask = mask.to(logits.device)
    return logits[mask], tokens[:, 1:].to(logits.device)[mask]


@TASKS.register("instruction")
class Instruction(Classification):
    accuracy = "response-token accuracy"
    generates = True

    def __init__(self, response_tokens: int = 8):
        self.response_tokens = int(response_tokens)

    def encode(self, codec, part, seq_len):
        from fedgpt.data.records import Instructions

        if not isinstance(part, Instructions):
            raise DataError(
                'task.kind = "instruction" needs prompt/response records ({"prompt": ..., '
                '"response": ...} lines in data.path, or a data source of labelled records)'
            )
        return encode_instructions(codec, part, seq_len, self.response_tokens)

    def loss(self, model, batch):
        z, y = answer_logits(model, batch)
        return F.cross_entropy(z, y)

    @torch.no_grad()
    def evaluate(self, model, data, seq_len, max_tokens=0):
        model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        for chunk in data.split(64) if data.shape[0] else ():  # a client may hold no test
            z, y = answer_logits(model, chunk)
            loss_sum += float(F.cross_entropy(z, y, reduction="sum"))
            correct += int((z.argmax(-1) == y).sum())
            count += int(y.numel())
        return loss_sum, correct, count, {}
