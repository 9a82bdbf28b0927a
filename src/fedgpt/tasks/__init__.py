"""Tasks: what a client's data means to the model (batches, loss, metric sums).
Importing the package registers the built-in tasks."""

from fedgpt.tasks import causal_lm, classification, instruction, tabular  # noqa: F401
from fedgpt.tasks.base import TASKS, Task
from fedgpt.tasks.causal_lm import CausalLM, evaluate_tokens, lm_loss
from fedgpt.tasks.classification import Classification

__all__ = ["TASKS", "CausalLM", "Classification", "Task", "evaluate_tokens", "lm_loss"]
