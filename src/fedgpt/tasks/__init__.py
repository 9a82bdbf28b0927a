"""Tasks: what a client's data means to the model (batches, loss, metric sums).
Importing the package registers the built-in tasks."""

from fedgpt.tasks import causal_lm  # noqa: F401  (registration)
from fedgpt.tasks.base import TASKS, Task
from fedgpt.tasks.causal_lm import CausalLM, evaluate_tokens, lm_loss

__all__ = ["TASKS", "CausalLM", "Task", "evaluate_tokens", "lm_loss"]
