"""Per-client text and the ordered train/test split used for every data source.

A federated data set is a list of :class:`ClientText`: each client holds its own training
text and a held-out test text. Following LEAF, the split keeps the original order of a
client's lines: the first ``train_fraction`` of the lines train, the rest test, so the test
text always continues the training text instead of being sampled from inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedgpt.data.records import Examples

__all__ = ["ClientText", "client_from_lines", "split_lines"]


@dataclass(frozen=True)
class ClientText:
    """The data of one client: ``train`` for local training, ``test`` for evaluation; text,
    or labelled :class:`~fedgpt.data.records.Examples` for classification."""

    client_id: str
    train: str | Examples
    test: str | Examples

    @property
    def num_chars(self) -> int:
        """Characters held by the client, train and test together."""
        size = lambda x: x.num_chars if isinstance(x, Examples) else len(x)  # noqa: E731
        return size(self.train) + size(self.test)


def split_lines(lines: Sequence[str], train_fraction: float = 0.8) -> tuple[list[str], list[str]]:
    """Split ``lines`` in order: the first ``round(n * train_fraction)`` train, the rest test.

    At least one line goes to training whenever there is a line at all, so a client is never
    left without training text. ``train_fraction`` must lie in ``[0, 1]``.
    """
    if not 0.0 <= train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction}")
    n = len(lines)
    n_train = min(n, max(1, round(n * train_fraction))) if n else 0
    return list(lines[:n_train]), list(lines[n_train:])


def client_from_lines(
    client_id: str, lines: Sequence[str], train_fraction: float = 0.8
) -> ClientText:
    """Build a :class:`ClientText` from ordered lines, split with :func:`split_lines`.

    Train and test lines are each joined with ``"\\n"``.
    """
    train, test = split_lines(lines, train_fraction)
    return ClientText(client_id=client_id, train="\n".join(train), test="\n".join(test))
