"""Seeded client sampling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def clients_per_round(num_clients: int, fraction: float, min_clients: int) -> int:
    """max(min_clients, ⌈fraction · N⌉), at most N."""
    return min(num_clients, max(min_clients, math.ceil(fraction * num_clients)))


def sample_clients(
    client_ids: Sequence[str], round: int, seed: int, fraction: float, min_clients: int
) -> list[str]:
    """Clients of ``round``, drawn without replacement from a generator keyed by
    (seed, round), so a resumed run samples exactly as an uninterrupted one."""
    k = clients_per_round(len(client_ids), fraction, min_clients)
    rng = np.random.default_rng([seed, round, 0x5A4D])
    chosen = np.sort(rng.choice(len(client_ids), size=k, replace=False))
    return [client_ids[i] for i in chosen]
