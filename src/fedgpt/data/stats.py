"""Size and skew statistics of a federated text data set.

A client's size is its number of characters, train and test together. The skew measures:

* ``gini``: the Gini coefficient of the client sizes, computed with the standard formula
  over the sizes sorted in ascending order ``x_1 <= ... <= x_n`` (1-based ``i``)::

      G = 2 * sum(i * x_i) / (n * sum(x)) - (n + 1) / n

  which equals the mean absolute difference over all ordered pairs divided by twice the
  mean, ``sum_ij |x_i - x_j| / (2 * n**2 * mean(x))``. It is 0 when all clients are the
  same size and ``(n - 1) / n`` when one client holds everything (0.75 for four clients).
* ``top10_share``: the share of all characters held by the largest ``ceil(n / 10)``
  clients (at least one).
* ``cv``: the coefficient of variation, population standard deviation over mean.

With no clients, or no characters at all, the size statistics and skew measures are 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedgpt.data.clients import ClientText

__all__ = ["dataset_stats", "gini"]


def gini(sizes: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative ``sizes`` (see the module docstring); 0 if all zero."""
    x = np.sort(np.asarray(sizes, dtype=np.float64))
    n, total = x.size, float(x.sum())
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * np.dot(ranks, x) / (n * total) - (n + 1) / n)


def dataset_stats(clients: Sequence[ClientText]) -> dict[str, float | int]:
    """Sizes and skew of ``clients``.

    Keys: ``num_clients``, ``train_chars``, ``test_chars`` (totals), ``chars_min``,
    ``chars_median``, ``chars_max``, ``chars_mean`` (per client, train and test
    together), ``gini``, ``top10_share`` and ``cv``. Values are plain Python numbers.
    """
    train = np.fromiter((len(c.train) for c in clients), dtype=np.int64, count=len(clients))
    test = np.fromiter((len(c.test) for c in clients), dtype=np.int64, count=len(clients))
    sizes = train + test
    n = int(sizes.size)
    total = int(sizes.sum())
    stats: dict[str, float | int] = {
        "num_clients": n,
        "train_chars": int(train.sum()),
        "test_chars": int(test.sum()),
        "chars_min": 0,
        "chars_median": 0.0,
        "chars_max": 0,
        "chars_mean": 0.0,
        "gini": 0.0,
        "top10_share": 0.0,
        "cv": 0.0,
    }
    if n == 0:
        return stats
    mean = float(sizes.mean())
    stats.update(
        chars_min=int(sizes.min()),
        chars_median=float(np.median(sizes)),
        chars_max=int(sizes.max()),
        chars_mean=mean,
    )
    if total > 0:
        top = max(1, math.ceil(n / 10))
        stats.update(
            gini=gini(sizes),
            top10_share=float(np.sort(sizes)[-top:].sum() / total),
            cv=float(sizes.std() / mean),
        )
    return stats
