"""Labelled records: the data of classification tasks, and tabular rows as text.

A client of a classification task holds :class:`Examples` (texts with a class index each)
instead of free text. A tabular record becomes text the way TabLLM does it (Hegselmann et
al. 2023, "TabLLM: Few-shot Classification of Tabular Data with Large Language Models",
the "list" serialisation, §3.2): one ``name: value`` per feature, so the same language
model reads records of any table.

Natural partitions (by site, by age band) come from each data set's loader;
:func:`dirichlet_partition` is the usual synthetic label skew (Hsu et al. 2019,
"Measuring the effects of non-identical data distribution for federated visual
classification", §3: client class proportions q ~ Dir(α p)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Examples:
    """Texts and their class indices into ``classes`` (the verbalised class names)."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    question: str = ""  # appended to every text by the task ("Diabetic? Answer:")
    # the same records as numbers (one tuple per record), for the classical reference
    # models (:mod:`fedgpt.tasks.tabular`); empty where a data set has none
    features: tuple[tuple[float, ...], ...] = ()

    def __len__(self) -> int:
        return len(self.texts)

    def __add__(self, other: Examples) -> Examples:
        return Examples(self.texts + other.texts, self.labels + other.labels, self.classes,
                        self.question, self.features + other.features)  # fmt: skip

    def take(self, a: int, b: int) -> Examples:
        """Records ``a`` to ``b`` (a slice)."""
        return Examples(self.texts[a:b], self.labels[a:b], self.classes, self.question,
                        self.features[a:b])  # fmt: skip

    @property
    def num_chars(self) -> int:
        return sum(len(t) for t in self.texts)


@dataclass(frozen=True)
class Instructions:
    """Prompt and response pairs: instruction data, for the ``instruction`` task (the loss
    on the response only)."""

    prompts: tuple[str, ...]
    responses: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)

    def __add__(self, other: Instructions) -> Instructions:
        return Instructions(self.prompts + other.prompts, self.responses + other.responses)

    def take(self, a: int, b: int) -> Instructions:
        return Instructions(self.prompts[a:b], self.responses[a:b])

    @property
    def num_chars(self) -> int:
        return sum(len(p) + len(r) for p, r in zip(self.prompts, self.responses, strict=True))

    @classmethod
    def of_examples(cls, ex: Examples) -> Instructions:
        """Labelled records as instructions: the record and its question, then the class's
        name as the response."""
        return cls(tuple(f"{t} {ex.question}".rstrip() for t in ex.texts),
                   tuple(" " + ex.classes[y] for y in ex.labels))  # fmt: skip


def serialise(row: Mapping[str, object], names: Mapping[str, str]) -> str:
    """``row`` as TabLLM's list serialisation: "Name: value." per feature, in ``names``'
    order (``names`` maps column to the words a reader understands)."""
    parts = []
    for col, label in names.items():
        value = row[col]
        if isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{label}: {value}.")
    return " ".join(parts)


def scaled(row: Mapping[str, object], scales: Mapping[str, tuple[float, float]]) -> tuple:
    """``row``'s features as numbers (x − centre) / scale, in ``scales``' order. Centres and
    scales are round numbers for each quantity's usual range (e.g. glucose around 120
    mg/dl, in steps of 30), fixed once in the data set's loader as sites would agree on
    them up front, not fitted to any site's records: every site encodes its records the
    same way without sharing statistics."""
    return tuple((float(row[k]) - c) / s for k, (c, s) in scales.items())


def split_examples(ex: Examples, train_fraction: float) -> tuple[Examples, Examples]:
    """The first ``round(n * train_fraction)`` records train (at least one), the rest test,
    in the order given (as the text split does)."""
    n = len(ex)
    k = min(n, max(1, round(n * train_fraction))) if n else 0
    return ex.take(0, k), ex.take(k, n)


def dirichlet_partition(
    labels: Sequence[int], num_clients: int, alpha: float, seed: int
) -> list[list[int]]:
    """Indices of each client's records: for every class, its records (shuffled) are dealt
    to the clients in proportions drawn from Dir(α), so small α gives each client a few
    dominant classes. Seeded; every record goes to exactly one client."""
    rng = np.random.default_rng([seed, 0xD1])
    labels = np.asarray(labels)
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        share = rng.dirichlet(np.full(num_clients, alpha))
        bounds = (np.cumsum(share)[:-1] * len(idx)).round().astype(int)
        for c, chunk in enumerate(np.split(idx, bounds)):
            parts[c].extend(int(i) for i in chunk)
    return [sorted(p) for p in parts]
