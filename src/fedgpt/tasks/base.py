"""The ``Task`` component: what a client's data means to the model.

A task turns a client's data into training batches, computes the loss the client
minimises, and the sums a client reports when it evaluates (so the server can weigh
every client by how much it predicted), and names what "accuracy" is:

    batch = task.batch(data, batch_size, seq_len, gen)
    loss = task.loss(model, batch)                      # a scalar tensor
    sums = task.metric_sums(model, data, seq_len, max_tokens)  # loss_sum, correct, count
    n = task.num_examples(data)                         # FedAvg's n_k

A new task is one module plus one registration line::

    @TASKS.register("my_task")
    class MyTask(Task):
        def loss(self, model, batch): ...

selected with ``task.kind = "my_task"``. The built-in task is next-token prediction
(:mod:`fedgpt.tasks.causal_lm`).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from fedgpt.registry import Registry


class Task:
    name: ClassVar[str] = ""
    accuracy: ClassVar[str] = "accuracy"  # what a correct prediction is, for reports
    generates: ClassVar[bool] = False  # its model continues text (the report's samples)

    def batch(
        self, data: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator
    ) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metric_sums(
        self, model: torch.nn.Module, data: torch.Tensor, seq_len: int, max_tokens: int = 0
    ) -> tuple[float, int, int]:
        """(sum of per-example losses, correct predictions, predictions)."""
        raise NotImplementedError

    def num_examples(self, data: torch.Tensor) -> int:
        raise NotImplementedError

    def epoch_batches(self, data: torch.Tensor, batch_size: int, seq_len: int) -> float:
        """Batches in one pass over ``data`` (``client.local_epochs``): windows of
        ``seq_len`` tokens here; records for tasks of records."""
        return data.numel() / (batch_size * seq_len)

    def encode(self, codec, part, seq_len: int) -> torch.Tensor:
        """A client's data (text, or labelled records) as the tensor the task reads."""
        if not isinstance(part, str):
            from fedgpt.errors import DataError

            raise DataError(
                f"task.kind = {self.name!r} reads text, but the data holds labelled records: "
                'set task.kind = "classification"'
            )
        return torch.from_numpy(codec.encode(part))

    def evaluate(self, model, data, seq_len: int, max_tokens: int = 0):
        """``metric_sums`` and the task's extra statistics (numbers or lists of numbers,
        summed over clients by the server; e.g. a score histogram)."""
        return (*self.metric_sums(model, data, seq_len, max_tokens), {})

    def records(self, data: torch.Tensor, seq_len: int) -> torch.Tensor:
        """The client's records, one per row: what DP-SGD samples and protects."""
        raise NotImplementedError

    def split_tail(self, data: torch.Tensor, fraction: float, seq_len: int):
        """(train, validation): the last ``fraction`` of the data held out."""
        raise NotImplementedError


TASKS: Registry[type[Task]] = Registry("task", "task.kind")
