"""Tests of the data set statistics against hand-computed values.

The Gini coefficient uses the standard formula over sizes sorted ascending (1-based i):
G = 2 * sum(i * x_i) / (n * sum(x)) - (n + 1) / n, equal to the mean absolute difference
over all ordered pairs divided by twice the mean.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedgpt.data import ClientText, dataset_stats
from fedgpt.data.stats import gini


def clients_of(sizes: list[int]) -> list[ClientText]:
    """Clients with the given character counts, split unevenly between train and test."""
    return [ClientText(f"c{i}", "x" * (s - s // 3), "y" * (s // 3)) for i, s in enumerate(sizes)]


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([1, 1, 1, 1], 0.0),
        ([0, 0, 0, 1], 0.75),  # 2*4/(4*1) - 5/4
        ([1, 2, 3, 4], 0.25),  # 2*30/(4*10) - 5/4
        ([4, 3, 2, 1], 0.25),  # order does not matter
        ([5], 0.0),
        ([0, 0], 0.0),
        ([], 0.0),
    ],
)
def test_gini_hand_computed(sizes: list[int], expected: float) -> None:
    assert gini(sizes) == pytest.approx(expected, abs=1e-12)


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=40))
def test_gini_matches_pairwise_formula(sizes: list[int]) -> None:
    n, total = len(sizes), sum(sizes)
    if total == 0:
        assert gini(sizes) == 0.0
        return
    pairwise = sum(abs(a - b) for a in sizes for b in sizes) / (2 * n * total)
    assert gini(sizes) == pytest.approx(pairwise, abs=1e-9)
    assert -1e-12 <= gini(sizes) <= (n - 1) / n + 1e-12


def test_dataset_stats_hand_computed() -> None:
    stats = dataset_stats(clients_of([10, 20, 30, 40]))
    assert stats == {
        "num_clients": 4,
        "train_chars": 7 + 14 + 20 + 27,
        "test_chars": 3 + 6 + 10 + 13,
        "chars_min": 10,
        "chars_median": 25.0,
        "chars_max": 40,
        "chars_mean": 25.0,
        "gini": pytest.approx(0.25),
        "top10_share": pytest.approx(0.4),  # ceil(4 / 10) = 1 client: 40 of 100
        "cv": pytest.approx(math.sqrt(125) / 25),  # population standard deviation
    }
    assert all(type(v) in (int, float) for v in stats.values())


def test_equal_clients_have_no_skew() -> None:
    stats = dataset_stats(clients_of([7] * 5))
    assert stats["gini"] == pytest.approx(0.0, abs=1e-12)
    assert stats["cv"] == 0.0
    assert stats["top10_share"] == pytest.approx(1 / 5)


def test_top10_share_uses_the_largest_tenth() -> None:
    sizes = [1] * 18 + [41, 40]  # 20 clients: the largest 2 hold 81 of 99 characters
    assert dataset_stats(clients_of(sizes))["top10_share"] == pytest.approx(81 / 99)


def test_one_client_holding_everything() -> None:
    stats = dataset_stats(clients_of([0, 0, 0, 9]))
    assert stats["gini"] == pytest.approx(0.75)
    assert stats["top10_share"] == 1.0
    assert stats["chars_min"] == 0 and stats["chars_median"] == 0.0


def test_empty_inputs() -> None:
    assert dataset_stats([]) == {
        "num_clients": 0,
        "train_chars": 0,
        "test_chars": 0,
        "chars_min": 0,
        "chars_median": 0.0,
        "chars_max": 0,
        "chars_mean": 0.0,
        "gini": 0.0,
        "top10_share": 0.0,
        "cv": 0.0,
    }
    stats = dataset_stats([ClientText("a", "", ""), ClientText("b", "", "")])
    assert stats["num_clients"] == 2 and stats["gini"] == stats["cv"] == 0.0
