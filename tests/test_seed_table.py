"""The benchmark tables' AUC interval: seeds scored on the same test records must not
narrow it below one run's own interval."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from fedgpt.tasks import scores


def _seed_table():
    path = Path(__file__).parents[1] / "benchmarks" / "_seed_table.py"
    spec = importlib.util.spec_from_file_location("_seed_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _hist(n: int, shift: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.35
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + shift * y - 0.7)))
    return scores.histogram(torch.tensor(p), torch.tensor(y.astype(int)))


def test_equal_seeds_give_one_runs_interval_and_spread_seeds_widen_it():
    table = _seed_table()
    one = _hist(107, 2.0, 0)
    alone = scores.auc_interval(one)
    same = table.mean_interval([{"hist": one}] * 5)
    assert abs((same[1] - same[0]) - (alone[1] - alone[0])) < 0.02
    spread = table.mean_interval([{"hist": _hist(107, s, 0)} for s in (0.5, 1.0, 2.0, 3.0, 4.0)])
    assert spread[1] - spread[0] > 1.5 * (alone[1] - alone[0])
