"""Text from a model: the prompt continued by sampled tokens (nanoGPT's ``generate``)."""

from __future__ import annotations

import torch

from fedgpt.models.build import ModelBundle
from fedgpt.models.device import forward


@torch.no_grad()
def sample(
    bundle: ModelBundle,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    context: int,
) -> str:
    """``prompt`` continued by ``max_new_tokens`` tokens of ``bundle``'s model, sampled at
    ``temperature`` (greedy at 0) from a generator seeded with ``seed``, the input cut to
    the last ``context`` tokens."""
    model = bundle.model
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = bundle.codec.encode(prompt).tolist()
    try:
        for _ in range(max_new_tokens if out else 0):
            window = torch.tensor([out[-context:]])
            logits = forward(model, input_ids=window).logits[0, -1].float().cpu()
            if temperature <= 0:
                nxt = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = int(torch.multinomial(probs, 1, generator=gen))
            out.append(nxt)
    finally:
        model.train(was_training)
    return bundle.codec.decode(out)
