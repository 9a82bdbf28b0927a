"""Per-client text and the ordered train/test split used for every data source.

A federated data set is a list of :class:`ClientText`: each client holds its own training
text and a held-out test text. Following LEAF, the split keeps the original order of a
client's lines: the first ``train_fraction`` of the lines train, the rest test, so the test
text always continues the training text instead of being sampled from inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedgpt.data.records import Examples

__all__ = ["ClientText", "client_from_lines", "split_lines"]


@dataclass(frozen=True)
class ClientText:
    """The data of one client: ``train`` for local training, ``test`` for evaluation; text,
    labelled :class:`~fedgpt.data.records.Examples` for classification, or
    :class:`~fedgpt.data.records.Instructions`."""

    client_id: str
    train: object  # str | Examples | Instructions
    test: object

    @property
    def num_chars(self) -> int:
        """Characters held by the client, train and test together."""
        size = lambda x: len(x) if isinstance(x, str) else x.num_chars  # noqa: E731
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


def clients_of_groups(
    groups: dict[str, list[int]],
    texts: Sequence[str],
    labels: Sequence[int],
    classes: tuple[str, ...],
    question: str,
    train_fraction: float,
    features: Sequence[tuple[float, ...]] = (),
    cap: tuple[int, int] = (0, 0),
) -> list[ClientText]:
    """One client per group of record indices, its records split in order (the first
    ``train_fraction`` train); a group without a training record is left out. ``cap`` =
    (most records per group, seed): a larger group keeps a seeded sample of that many, in
    their order, before the split (0 = all)."""
    from fedgpt.data.records import split_examples

    clients = []
    for g, (cid, idx) in enumerate(groups.items()):
        idx = _capped(idx, *cap, g)
        num = tuple(features[i] for i in idx) if features else ()
        ex = Examples(tuple(texts[i] for i in idx), tuple(labels[i] for i in idx), classes,
                      question, num)  # fmt: skip
        train, test = split_examples(ex, train_fraction)
        if len(train):
            clients.append(ClientText(cid, train, test))
    return clients


def _capped(idx: Sequence[int], most: int, seed: int, group: int) -> Sequence[int]:
    """``idx`` itself, or a seeded sample of ``most`` of its indices in their order."""
    if not most or len(idx) <= most:
        return idx
    rng = np.random.default_rng([seed, 0xCA9, group])
    return [idx[i] for i in np.sort(rng.choice(len(idx), size=most, replace=False))]


def slug(name: str) -> str:
    """A site's name as part of a client id: lower case, other characters as one "_"."""
    import re

    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def sites_of(
    rows, key: str, prefix: str, min_site: int = 0, other: str = "other"
) -> dict[str, list[int]]:
    """Row indices grouped by ``row[key]``, as ``prefix/slug(value)``; values with fewer
    than ``min_site`` rows share the site ``prefix/other``. Sorted by site name."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r[key])] = counts.get(str(r[key]), 0) + 1
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        v = str(r[key])
        site = slug(v) if counts[v] >= min_site else other
        groups.setdefault(f"{prefix}/{site}", []).append(i)
    return dict(sorted(groups.items()))


@dataclass(frozen=True)
class Partitioning:
    """How a data set of records becomes clients (``data.partition`` and its settings)."""

    partition: str = "natural"
    num_clients: int = 10
    alpha: float = 0.5
    seed: int = 0
    train_fraction: float = 0.8
    max_records: int = 0


def records_clients(
    rows, label: str, natural, prefix: str, part: Partitioning, text, spec, numeric=None
):
    """The clients of ``rows`` (dicts with a ``label`` key): ``natural()`` groups of row
    indices, or Dirichlet sites named ``prefix/site_NN``; ``text(row)`` serialises a row,
    ``numeric(row)`` encodes it as numbers; ``spec`` = (classes, question)."""
    from fedgpt.data.records import dirichlet_partition

    labels = [r[label] for r in rows]
    if part.partition == "natural":
        groups = natural()
    else:
        parts = dirichlet_partition(labels, part.num_clients, part.alpha, part.seed)
        groups = {f"{prefix}/site_{c:02d}": idx for c, idx in enumerate(parts)}
    texts = [text(r) for r in rows]
    num = [numeric(r) for r in rows] if numeric is not None else ()
    cap = (part.max_records, part.seed)
    return clients_of_groups(groups, texts, labels, *spec, part.train_fraction, num, cap)


def records_as_text(clients: Sequence[ClientText]) -> list[ClientText]:
    """Clients of records as clients of text (one record per line), for language
    modelling on the records themselves."""
    join = lambda part: "\n".join(part.texts) if isinstance(part, Examples) else part  # noqa: E731
    return [ClientText(c.client_id, join(c.train), join(c.test)) for c in clients]


def records_as_instructions(clients: Sequence[ClientText]) -> list[ClientText]:
    """Clients of labelled records as clients of instructions (the class as the answer)."""
    from fedgpt.data.records import Instructions

    conv = lambda part: Instructions.of_examples(part) if isinstance(part, Examples) else part  # noqa: E731
    return [ClientText(c.client_id, conv(c.train), conv(c.test)) for c in clients]
