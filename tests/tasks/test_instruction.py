"""task.kind = "instruction": the loss on the response only (prompt masking), instruction
data from a client folder, and labelled records as instructions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedgpt.config import load_config
from fedgpt.data.records import Instructions
from fedgpt.errors import DataError
from fedgpt.experiment import run_experiment
from fedgpt.models.build import build_char_gpt2
from fedgpt.tasks.instruction import Instruction, encode_instructions

TEXT = "What is the capital of France? Paris. Rome. Answer: yes no 0123456789"


@pytest.fixture(scope="module")
def bundle():
    cfg = load_config(None, ["model.n_layer=1", "model.n_embd=16", "model.context=64"]).model
    return build_char_gpt2(cfg, [TEXT], 0)


def test_the_loss_is_the_responses_tokens_only(bundle):
    model = bundle.model.eval()
    part = Instructions(("What is the capital of France?", "Rome?"), (" Paris", " yes"))
    rows = encode_instructions(bundle.codec, part, 40, 8)
    got = Instruction().loss(model, rows)
    terms = []
    for prompt, response in zip(part.prompts, part.responses, strict=True):
        p, r = bundle.codec.encode(prompt), bundle.codec.encode(response)
        ids = torch.from_numpy(np.concatenate([p, r])).long()[None]
        logits = model(input_ids=ids[:, :-1]).logits[0]
        start = len(p) - 1  # the logit that predicts the response's first token
        terms.append(F.cross_entropy(logits[start:], ids[0, len(p) :], reduction="none"))
    assert float(got) == pytest.approx(float(torch.cat(terms).mean()), rel=1e-5)
    loss_sum, correct, count, _ = Instruction().evaluate(model, rows, 40)
    assert count == len(" Paris") + len(" yes")


def test_where_a_response_starts_does_not_depend_on_the_response(bundle):
    long = "Answer: " * 20
    rows = encode_instructions(bundle.codec, Instructions((long, long), (" no", " yes")), 32, 8)
    w = rows.shape[1] - 2
    assert rows[0, w + 1] == rows[1, w + 1] == 33 - 8  # the same start: no label in position
    assert rows[1, w] == rows[1, w + 1] + 4 and rows[0, w] == rows[0, w + 1] + 3
    with pytest.raises(DataError, match="task.response_tokens = 40"):
        encode_instructions(bundle.codec, Instructions(("a",), ("b",)), 32, 40)
    with pytest.raises(DataError, match="response has no tokens"):
        encode_instructions(bundle.codec, Instructions(("a",), ("",)), 32, 8)


def test_a_federation_on_instruction_folders(tmp_path):
    for c in ("alice", "bob"):
        (tmp_path / "data" / c).mkdir(parents=True)
        lines = [json.dumps({"prompt": f"What is {i} plus {i}?", "response": f" {2 * i}"})
                 for i in range(30)]  # fmt: skip
        (tmp_path / "data" / c / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "data" / "carol").mkdir()  # a single record: it trains, and has no test
    one = json.dumps({"prompt": "What is 1 plus 1?", "response": " 2"})
    (tmp_path / "data" / "carol" / "train.jsonl").write_text(one + "\n")
    over = ['data.source="dir"', f'data.path="{tmp_path / "data"}"', 'task.kind="instruction"',
            "model.n_layer=1", "model.n_embd=16", "client.seq_len=32", "federation.rounds=2",
            "federation.fraction=1.0", "client.local_steps=2", "baselines.local_max_steps=2",
            "report.prompts=[]", f'out_dir="{tmp_path}"']  # fmt: skip
    summary = run_experiment(load_config(None, over), tmp_path / "run")
    per = summary["federated_per_client"]
    assert set(per) == {"alice", "bob"}  # carol trained, but holds no test record
    # 6 test records each (30 lines, 0.8 train), every response token counted once
    want = sum(len(f" {2 * i}") for i in range(24, 30))
    assert per["alice"]["count"] == want


def test_bad_instruction_lines_are_one_line_with_file_and_line(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    good = json.dumps({"prompt": "p", "response": "r"})
    (tmp_path / "d" / "a" / "train.jsonl").write_text(good + "\n" + '{"prompt": "p"}\n')
    from fedgpt.data.userdata import load_client_dir

    with pytest.raises(DataError, match=r"train.jsonl:2: expected .*'response' = null"):
        load_client_dir(tmp_path / "d")


def test_pima_records_as_instructions(tmp_path):
    over = ['data.source="pima"', 'task.kind="instruction"', "model.n_layer=1",
            "model.n_embd=16", "model.context=128", "client.seq_len=96", "federation.rounds=1",
            "federation.fraction=1.0", "client.local_steps=1", "baselines.enabled=false",
            "report.prompts=[]", "task.response_tokens=4", f'out_dir="{tmp_path}"']  # fmt: skip
    summary = run_experiment(load_config(None, over), tmp_path / "run")
    counts = sum(v["count"] for v in summary["federated_per_client"].values())
    assert counts == 75 * len(" no") + 32 * len(" yes")  # the 107 test records' answers
