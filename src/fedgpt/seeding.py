"""Seeds: every random draw of a run is keyed by (run seed, round, client), so it does
not depend on sampling order, and a rerun with the same seed draws the same numbers."""

from __future__ import annotations

import numpy as np
import torch


def client_seed(run_seed: int, round: int, client_id: str) -> int:
    """A 63-bit seed for (run, round, client), independent of sampling order."""
    key = np.frombuffer(client_id.encode("utf-8"), dtype=np.uint8).astype(np.uint32)
    ss = np.random.SeedSequence([run_seed, round, *key.tolist()])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator(run_seed: int, round: int, purpose: str) -> torch.Generator:
    """A torch generator for one purpose (e.g. ``"__bucket__"``) of one round."""
    return torch.Generator().manual_seed(client_seed(run_seed, round, purpose))
