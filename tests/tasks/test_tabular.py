"""The classical reference: logistic regression and an MLP on the records' raw features,
federated through the same strategies, privacy modes and baselines as the language model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedgpt.config import load_config
from fedgpt.data.clients import Partitioning
from fedgpt.data.pima import SCALES, pima_clients, pima_rows
from fedgpt.errors import ConfigError, DataError
from fedgpt.experiment import run_experiment
from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint
from fedgpt.models.tabular import load_tabular
from fedgpt.tasks.tabular import Tabular, encode_features

TAB = ['data.source="pima"', 'task.kind="tabular"', 'model.family="logistic"',
       "federation.rounds=30", "federation.fraction=1.0", "client.lr=0.05",
       "client.local_steps=5", "client.batch_size=16", "federation.eval_every=10",
       "report.prompts=[]"]  # fmt: skip


def pooled(clients, part: str):
    x = np.array([f for c in clients for f in getattr(c, part).features])
    y = np.array([v for c in clients for v in getattr(c, part).labels])
    return x, y


def test_records_carry_their_features_scaled_in_the_loaders_order():
    rows, clients = pima_rows(), pima_clients()
    assert sum(len(c.train) + len(c.test) for c in clients) == len(rows) == 532
    first = clients[0].train
    assert len(first.features) == len(first.texts) and len(first.features[0]) == len(SCALES)
    # the scaling is fixed, so a record's numbers are its values, centred and scaled
    row = next(r for r in rows if 21 <= r["age"] <= 24)
    glu = (row["glu"] - SCALES["glu"][0]) / SCALES["glu"][1]
    assert first.features[0][1] == pytest.approx(glu)
    t = encode_features(first)
    assert t.shape == (len(first), len(SCALES) + 1) and t.dtype == torch.float32
    assert t[:, -1].tolist() == [float(v) for v in first.labels]


def test_dirichlet_sites_keep_each_records_features():
    nat = {t: f for c in pima_clients() for t, f in zip(c.train.texts, c.train.features)}  # noqa: B905
    part = Partitioning("dirichlet", num_clients=4, alpha=0.5, seed=1)
    for c in pima_clients(part):
        for text, feats in zip(c.train.texts, c.train.features, strict=True):
            if text in nat:
                assert nat[text] == feats


def test_free_text_or_records_without_features_are_refused():
    from fedgpt.data.records import Examples

    with pytest.raises(DataError, match="labelled records"):
        Tabular().encode(None, "some text", 8)
    with pytest.raises(DataError, match="numeric features"):
        Tabular().encode(None, Examples(("a",), (0,), ("no", "yes")), 8)


def test_federated_logistic_regression_matches_a_centralized_fit(tiny_overrides, tmp_path):
    summary = run_experiment(load_config(None, [*tiny_overrides, *TAB]), tmp_path / "run")
    fed, central = summary["federated"], summary["baselines"]["centralized"]
    local = summary["baselines"]["local_only"]
    # scikit-learn's logistic regression on the pooled training records: the reference fit
    clients = pima_clients()
    (x, y), (xt, yt) = pooled(clients, "train"), pooled(clients, "test")
    sk = roc_auc_score(yt, LogisticRegression(max_iter=1000).fit(x, y).predict_proba(xt)[:, 1])
    assert sk > 0.85
    assert fed["test_auc"] > 0.97 * sk and central["test_auc"] > 0.97 * sk
    assert fed["test_auc"] > local["test_auc_mean"] + 0.05
    # the saved model is the final weights, loadable on its own
    model = load_tabular(tmp_path / "run" / "model")
    w = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints")).weights
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), w)
    with torch.no_grad():
        p = torch.softmax(model(torch.tensor(xt, dtype=torch.float32)), -1)[:, 1].numpy()
    assert roc_auc_score(yt, p) == pytest.approx(fed["test_auc"], abs=0.01)  # histogram bins


@pytest.mark.parametrize(
    "extra",
    [['model.family="mlp"', "model.hidden=8"], ['privacy.secure_aggregation="secagg"'],
     ['privacy.mode="dp_sgd"', "privacy.noise_multiplier=1.0"]],
    ids=["mlp", "secagg", "dp_sgd"],
)  # fmt: skip
def test_the_classical_models_take_the_strategies_and_privacy_modes(
    extra, tiny_overrides, tmp_path
):
    over = [*tiny_overrides, *TAB, "baselines.enabled=false", *extra]
    summary = run_experiment(load_config(None, over), tmp_path / "run")
    assert summary["model"]["name"].startswith(("logistic-7", "mlp-7x8"))
    assert summary["federated"]["test_auc"] > 0.8
    if "dp_sgd" in extra[0]:
        assert 0 < summary["privacy"]["epsilon"] < float("inf")


@pytest.mark.parametrize(
    ("over", "match"),
    [(['task.kind="tabular"'], 'needs model.family = "logistic" or "mlp"'),
     (['model.family="logistic"', 'data.source="pima"', 'task.kind="classification"'],
      'set task.kind = "tabular"'),
     ([*TAB, "model.lora.enabled=true"], "does not take model.lora"),
     (['task.kind="tabular"', 'model.family="mlp"'], 'data.source = "shakespeare" has no numeric')],
)  # fmt: skip
def test_mismatched_model_and_task_are_one_line(over, match, tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, *over])
    with pytest.raises(ConfigError, match=match):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_auc_interval_covers_the_auc_and_narrows_with_more_records():
    from fedgpt.tasks import scores

    rng = np.random.default_rng(1)

    def hist(n):
        y = rng.integers(0, 2, n)
        p = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
        return scores.histogram(torch.tensor(p), torch.tensor(y))

    small, large = hist(200), hist(5000)
    lo, hi = scores.auc_interval(small)
    assert lo < scores.auc_from_histogram(small) < hi
    lo2, hi2 = scores.auc_interval(large)
    assert lo2 < scores.auc_from_histogram(large) < hi2
    assert (hi2 - lo2) < 0.3 * (hi - lo)  # ~ 1/sqrt(n): 5000 records vs 200
    assert scores.auc_interval(small) == scores.auc_interval(small)  # seeded
    one_class = [0.0] * scores.BINS + [3.0] + [0.0] * (scores.BINS - 1) + [0.0] * scores.BINS
    assert scores.auc_interval(one_class) is None


def test_an_epoch_of_records_is_records_over_batch_size():
    from fedgpt.client import num_local_steps
    from fedgpt.config.schema import ClientConfig

    train = pima_clients()[0].train
    rows = Tabular().encode(None, train, 64)
    cfg = ClientConfig(local_epochs=2.0, batch_size=8, seq_len=64)
    assert num_local_steps(Tabular().epoch_batches(rows, 8, 64), cfg) == -(-2 * len(train) // 8)
