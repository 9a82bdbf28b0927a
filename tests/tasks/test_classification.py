"""Classification with a language model (the class is the next token), the score
histograms that give pooled AUC and calibration without per-record scores, the Pima
records as clinics, and a federation that trains and reports them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from fedgpt.config import load_config
from fedgpt.data.pima import pima_clients, pima_rows
from fedgpt.data.records import Examples, dirichlet_partition, serialise
from fedgpt.errors import ConfigError, DataError
from fedgpt.experiment import run_experiment
from fedgpt.models.build import build_char_gpt2
from fedgpt.tasks import scores
from fedgpt.tasks.classification import (
    Classification,
    class_logits,
    encode_examples,
    unpack,
    verbaliser_ids,
)


def test_a_rare_class_of_small_scores_keeps_its_order():
    """Scores of 0.001 to 0.03 (a model of rare defaults) fall in different bins: the
    pooled AUC is sklearn's, not the 0.5 that one bin of ties would give."""
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.05).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(-5.0, 0.8, 2000) + 1.5 * y)))
    assert p.max() < 0.2
    auc = scores.auc_from_histogram(scores.histogram(torch.tensor(p), torch.tensor(y)))
    assert auc == pytest.approx(roc_auc_score(y, p), abs=0.01) and auc > 0.8


def test_histogram_auc_is_sklearns_up_to_ties_and_ece_is_exact():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    hist = scores.histogram(torch.tensor(p), torch.tensor(y))
    exact = roc_auc_score(y, p)
    # pairs sharing a bin are counted as ties: at most half their share of all pairs
    b = scores.bin_index(torch.tensor(p)).numpy()
    shared = sum((b[y == 1] == k).sum() * (b[y == 0] == k).sum() for k in range(scores.BINS))
    bound = 0.5 * shared / ((y == 1).sum() * (y == 0).sum())
    assert abs(scores.auc_from_histogram(hist) - exact) <= bound + 1e-12
    assert bound < 0.01
    edges = np.minimum((p * scores.ECE_BINS).astype(int), scores.ECE_BINS - 1)
    ece = sum(abs(y[edges == k].sum() - p[edges == k].sum()) for k in range(10)) / len(y)
    assert scores.ece_from_histogram(hist) == pytest.approx(ece, abs=1e-9)
    # summed histograms of two halves = the histogram of the whole
    h1 = scores.histogram(torch.tensor(p[:1000]), torch.tensor(y[:1000]))
    h2 = scores.histogram(torch.tensor(p[1000:]), torch.tensor(y[1000:]))
    assert np.allclose(np.add(h1, h2), hist)
    assert (
        scores.auc_from_histogram(scores.histogram(torch.tensor(p), torch.zeros(4000).long()))
        is None
    )


@pytest.fixture(scope="module")
def char_model():
    texts = [r for c in pima_clients() for r in c.train.texts] + ["Answer: yes no"]
    cfg = load_config(None, ["model.n_layer=1", "model.n_embd=16", "model.context=128"]).model
    return build_char_gpt2(cfg, texts, 0)


def test_rows_hold_tokens_length_label_and_verbaliser(char_model):
    codec = char_model.codec
    ex = Examples(("Glucose: 148.", "Glucose: 85. Age: 31."), (1, 0), ("no", "yes"), "Answer:")
    rows = encode_examples(codec, ex, 40)
    tokens, lengths, labels, cls = unpack(rows)
    assert labels.tolist() == [1, 0]
    assert cls.tolist() == verbaliser_ids(codec, ("no", "yes"))
    assert codec.decode(tokens[1, : lengths[1]].tolist()) == "Glucose: 85. Age: 31. Answer:"
    assert int(tokens[0, lengths[0] :].abs().sum()) == 0  # right padding
    short = encode_examples(codec, ex, 8)  # a long record keeps its end, the question
    t, n, _, _ = unpack(short)
    assert codec.decode(t[1, : n[1]].tolist()) == " Answer:"


def test_the_loss_is_cross_entropy_over_the_classes_at_the_answer(char_model):
    model = char_model.model.eval()
    ex = Examples(("Glucose: 148.", "Age: 31. BMI: 20."), (1, 0), ("no", "yes"), "Answer:")
    rows = encode_examples(char_model.codec, ex, 40)
    task = Classification()
    got = task.loss(model, rows)
    want = []
    for text, y in zip(ex.texts, ex.labels, strict=True):
        ids = torch.from_numpy(char_model.codec.encode(f"{text} Answer:")).long()[None]
        last = model(input_ids=ids).logits[0, -1]
        z = last[verbaliser_ids(char_model.codec, ex.classes)]
        want.append(F.cross_entropy(z[None], torch.tensor([y])))
    assert float(got) == pytest.approx(float(torch.stack(want).mean()), rel=1e-5)
    z, y = class_logits(model, rows)
    assert z.shape == (2, 2) and y.tolist() == [1, 0]


def test_verbaliser_tokens_must_differ(char_model):
    with pytest.raises(DataError, match="first tokens coincide"):
        verbaliser_ids(char_model.codec, ("yes", "yellow"))


def test_pima_as_clinics():
    rows = pima_rows()
    assert len(rows) == 532 and sum(r["type"] for r in rows) == 177
    natural = pima_clients()
    assert [c.client_id for c in natural] == [
        "pima/age_21-24", "pima/age_25-29", "pima/age_30-39", "pima/age_40-49", "pima/age_50+"
    ]  # fmt: skip
    assert sum(len(c.train) + len(c.test) for c in natural) == 532
    rate = [sum(c.train.labels) / len(c.train) for c in natural]
    assert rate[0] < 0.2 < 0.5 < rate[-1]  # diabetes is commoner with age
    assert natural[0].train.texts[0] == (
        "Pregnancies: 5. Glucose: 86. Blood pressure: 68. Skin fold: 28. BMI: 30.2. "
        "Pedigree: 0.364. Age: 24."
    )
    parts = dirichlet_partition([r["type"] for r in rows], 10, 0.5, seed=3)
    assert sorted(i for p in parts for i in p) == list(range(532))
    assert parts == dirichlet_partition([r["type"] for r in rows], 10, 0.5, seed=3)
    assert serialise({"a": 0.5, "b": 3}, {"a": "A", "b": "B"}) == "A: 0.5. B: 3."


def test_max_records_keeps_a_seeded_ordered_sample_of_each_site():
    from fedgpt.data.clients import Partitioning

    full = {c.client_id: c for c in pima_clients()}
    capped = pima_clients(Partitioning(seed=4, max_records=40))
    assert [c.client_id for c in capped] == list(full)
    for c in capped:
        whole = full[c.client_id].train.texts + full[c.client_id].test.texts
        kept = c.train.texts + c.test.texts
        assert len(kept) == min(40, len(whole)) and (len(c.train), len(c.test)) == (32, 8)
        pos = [whole.index(t) for t in kept]
        assert pos == sorted(pos)  # a sample in the records' order
    again = pima_clients(Partitioning(seed=4, max_records=40))
    other = pima_clients(Partitioning(seed=5, max_records=40))
    assert [c.train.texts for c in again] == [c.train.texts for c in capped]
    assert [c.train.texts for c in other] != [c.train.texts for c in capped]


def test_max_records_is_refused_for_text():
    with pytest.raises(ConfigError, match="data.max_records samples records"):
        load_config(None, ["data.max_records=5"])


PIMA = ['data.source="pima"', 'task.kind="classification"', "model.n_layer=1",
        "model.n_embd=16", "model.n_head=2", "model.context=128", "client.seq_len=112",
        "client.batch_size=8", "client.local_steps=2", "federation.rounds=2",
        "federation.fraction=1.0", "federation.min_clients=2", "federation.eval_every=1",
        "baselines.local_max_steps=4", "runtime.receipts=false"]  # fmt: skip


def test_a_pima_federation_reports_auc_per_client_and_pooled(tmp_path):
    cfg = load_config(None, [*PIMA, f'out_dir="{tmp_path}"'])
    summary = run_experiment(cfg, tmp_path / "r")
    fed = summary["federated"]
    assert 0.0 <= fed["test_auc"] <= 1.0 and 0.0 <= fed["test_ece"] <= 1.0
    assert fed["test_loss"] > 0 and "samples" in summary and summary["samples"] == []
    per = summary["federated_per_client"]
    assert set(per) == {c.client_id for c in pima_clients()}
    assert all(v["auc"] is None or 0 <= v["auc"] <= 1 for v in per.values())
    assert sum(v["count"] for v in per.values()) == 107  # every test record, once
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert all("test_auc" in r for r in rows)
    assert "test_auc" in summary["baselines"]["centralized"]
    assert "test_auc_mean" in summary["baselines"]["local_only"]
    report = (tmp_path / "r/report.md").read_text()
    assert "| method | test loss | AUC (95 % interval) | classification accuracy |" in report
    assert fed["test_auc_ci"][0] <= fed["test_auc"] <= fed["test_auc_ci"][1]
    hist = fed["test_hist"]
    assert len(hist) == 3 * scores.BINS and sum(hist[: 2 * scores.BINS]) == 107
    lo, hi = fed["test_auc_ci"]
    assert (
        f"| federated | {fed['test_loss']:.4f} | {fed['test_auc']:.4f} ({lo:.3f}–{hi:.3f}) |"
        in report
    )
    assert "| site | test records | accuracy | AUC | ECE | local-only AUC |" in report
    assert report.count("| pima/age\\_") == 5  # one row per clinic
    assert (tmp_path / "r/plots/sites_auc.png").stat().st_size > 1000


def test_dp_sgd_protects_each_record(tmp_path):
    pytest.importorskip("opacus")
    over = [*PIMA, f'out_dir="{tmp_path}"', 'privacy.mode="dp_sgd"', "privacy.noise_multiplier=1.0",
            "baselines.enabled=false"]  # fmt: skip
    summary = run_experiment(load_config(None, over), tmp_path / "dp")
    assert summary["privacy"]["epsilon"] > 0 and summary["rounds"] == 2
    assert summary["federated"]["test_auc"] is not None


@pytest.mark.parametrize(
    "over, needle",
    [
        (['task.kind="classification"'], "needs labelled records"),
        (['task.kind="instruction"'], "needs prompt/response records"),
    ],
)
def test_task_and_data_must_match(over, needle, tmp_path):
    from fedgpt.build import prepare

    cfg = load_config(None, [*over, "model.n_layer=1", "model.n_embd=16", 'data.plays=["lear"]',
                             f'out_dir="{tmp_path}"'])  # fmt: skip
    with pytest.raises(DataError, match=needle):
        prepare(cfg)


def test_a_single_class_client_still_counts_and_forged_histograms_are_refused(char_model):
    """A client whose test records hold one class has no AUC of its own, but its reply is
    valid and counts; a client that sends a histogram out of range, of fractional counts,
    or that disagrees with its count, is refused (its numbers never reach the pooled AUC)."""
    from fedgpt.messages import Message
    from fedgpt.schemas import HIST, Expect, parse_reply

    assert HIST == 3 * scores.BINS
    ex = Examples(("Glucose: 90.", "Glucose: 95."), (0, 0), ("no", "yes"), "Answer:")
    rows = encode_examples(char_model.codec, ex, 40)
    loss, correct, n, extra = Classification().evaluate(char_model.model, rows, 40)
    assert n == 2 and "auc" not in extra and len(extra["hist"]) == HIST
    reply = Message("evaluate/result", {"round": 1, "loss_sum": loss, "correct": correct,
                                        "count": n, **extra})  # fmt: skip
    ok, why = parse_reply(reply, Expect("evaluate/result", 1))
    assert ok is not None and not why, why
    forged = {
        "huge": [1e308] * HIST,
        "fractional": [0.5] * scores.BINS + [0.0] * (2 * scores.BINS),
        "miscounted": [5.0] + [0.0] * (HIST - 1),
        "p outside its bin": [2.0]
        + [0.0] * (2 * scores.BINS - 1)
        + [1.9]
        + [0.0] * (scores.BINS - 1),
    }
    for name, hist in forged.items():
        bad = Message("evaluate/result", {"round": 1, "loss_sum": loss, "correct": correct,
                                          "count": n, "hist": hist})  # fmt: skip
        got, why = parse_reply(bad, Expect("evaluate/result", 1))
        assert got is None and "hist" in why, (name, why)
