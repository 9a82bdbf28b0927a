"""The local trainer and evaluator (plain functions, no I/O)."""

from fedgpt.client.trainer import (
    Failure,
    NonFiniteLoss,
    Update,
    evaluate_tokens,
    lm_loss,
    local_update,
    make_optimizer,
    num_local_steps,
    train_steps,
)

__all__ = [
    "Failure",
    "NonFiniteLoss",
    "Update",
    "evaluate_tokens",
    "lm_loss",
    "local_update",
    "make_optimizer",
    "num_local_steps",
    "train_steps",
]
