"""model.head = "classifier": a new linear head on the last token of each record
(AutoModelForSequenceClassification) instead of the verbaliser; it pools each row's own
last token, learns, and trains and travels with the LoRA adapters."""

from __future__ import annotations

import pytest
import torch

from fedgpt.client.trainer import make_optimizer, train_steps
from fedgpt.config import load_config
from fedgpt.data.records import Examples
from fedgpt.errors import ConfigError
from fedgpt.experiment import run_experiment
from fedgpt.models.build import build_char_gpt2, build_model
from fedgpt.models.params import bind_flat
from fedgpt.tasks.classification import Classification, class_logits, encode_examples, unpack

TEXT = "colour: red. blue. green. Answer: yes no"


def head_model(**over):
    cfg = load_config(None, ['model.head="classifier"', "model.n_layer=1", "model.n_embd=16",
                             "model.context=64"]).model  # fmt: skip
    return build_char_gpt2(cfg.model_copy(update=over), [TEXT], 0)


def test_the_head_pools_each_rows_own_last_token():
    b = head_model()
    model = b.model.eval()
    ex = Examples(("colour: red.", "colour: blue. green. red."), (0, 1), ("no", "yes"), "Answer:")
    rows = encode_examples(b.codec, ex, 40)
    z, y = class_logits(model, rows)
    assert z.shape == (2, 2) and y.tolist() == [0, 1]
    tokens, lengths, _, _ = unpack(rows)
    for i in range(2):  # each row alone, unpadded: the same logits
        alone = model(input_ids=tokens[i : i + 1, : lengths[i]]).logits[0]
        assert torch.allclose(z[i], alone, atol=1e-5)


def test_a_classifier_head_learns_a_separable_task():
    b = head_model()
    texts = tuple(f"colour: {c}." for c in ("red", "blue") * 16)
    ex = Examples(texts, tuple(i % 2 for i in range(32)), ("no", "yes"), "Answer:")
    rows = encode_examples(b.codec, ex, 32)
    fm = bind_flat(b.model)
    cfg = load_config(None, ["client.lr=0.01", "client.batch_size=8"]).client
    task, gen = Classification(), torch.Generator().manual_seed(0)
    before = task.evaluate(b.model, rows, 32)
    train_steps(fm, make_optimizer(fm, cfg), rows, cfg, 60, gen, task=task)
    loss_sum, correct, count, extra = task.evaluate(b.model, rows, 32)
    assert correct == count == 32 and extra["auc"] == 1.0
    assert loss_sum < 0.2 * before[0]


def test_lora_trains_the_new_head_with_the_adapters(tiny_checkpoint):
    cfg = load_config(None, [f'model.path="{tiny_checkpoint}"', 'model.head="classifier"',
                             "model.lora.enabled=true", "model.lora.r=2"]).model  # fmt: skip
    b = build_model(cfg, [], 0)
    names = bind_flat(b.model).spec.names
    assert any("score" in n for n in names) and any("lora_A" in n for n in names)
    assert not any("wte" in n for n in names)  # the base model stays frozen


def test_the_head_needs_the_classification_task(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, 'model.head="classifier"'])
    with pytest.raises(ConfigError, match='model.head = "classifier" needs task.kind'):
        run_experiment(cfg, tmp_path / "run")


def test_a_pima_federation_with_the_head(tmp_path):
    over = ['data.source="pima"', 'task.kind="classification"', 'model.head="classifier"',
            "model.n_layer=1", "model.n_embd=16", "model.context=128", "client.seq_len=96",
            "federation.rounds=2", "federation.fraction=1.0", "client.local_steps=2",
            "baselines.enabled=false", "report.prompts=[]", f'out_dir="{tmp_path}"']  # fmt: skip
    summary = run_experiment(load_config(None, over), tmp_path / "r")
    assert summary["rounds"] == 2 and 0 <= summary["federated"]["test_auc"] <= 1
    assert sum(v["count"] for v in summary["federated_per_client"].values()) == 107
    assert (tmp_path / "r" / "model" / "config.json").is_file()
