"""Knowledge distillation: FedDF's fixed point and progress, FedMD sends no parameters,
a smaller client architecture, the consensus survives in the server state."""

import json

import pytest
import torch

from fedgpt.config import load_config
from fedgpt.experiment import prepare, run_experiment
from fedgpt.federation.distill import feddf_step, kd_loss, logits_on, public_windows
from fedgpt.messages import Message
from fedgpt.runtime.inprocess import InProcessRuntime

PUBLIC = 'data.public_plays=["macbeth"]'


@pytest.fixture
def base(tiny_overrides):
    return [*tiny_overrides, "baselines.enabled=false", PUBLIC]


def test_kd_loss_zero_only_at_the_teacher():
    t = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    assert float(kd_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(t + torch.randn_like(t), t, 1.0)) > 0.01


def test_feddf_fixed_point_and_progress(base):
    cfg = load_config(None, [*base, "federation.distill_steps=15", "federation.distill_lr=3e-3"])
    prep = prepare(cfg)
    w = prep.init.clone()
    step = feddf_step(prep.fm, prep.public, cfg)
    inputs = public_windows(prep.public, cfg.federation.distill_windows, cfg.client.seq_len, 7)
    # clients that did not move teach the aggregate what it already predicts: it stays put
    # (up to Adam's sign-like steps on round-off-sized gradients)
    still = step(w, w, torch.zeros(2, w.numel()), 1)
    base_logits = logits_on(prep.fm, w, inputs)
    assert float(kd_loss(logits_on(prep.fm, still, inputs), base_logits, 1.0)) < 1e-3
    gen = torch.Generator().manual_seed(1)
    deltas = 0.05 * torch.randn(3, w.numel(), generator=gen)
    teacher = torch.stack([logits_on(prep.fm, w + d, inputs) for d in deltas]).mean(0)
    before = float(kd_loss(logits_on(prep.fm, w, inputs), teacher, 1.0))
    out = step(w, w, deltas, 1)
    after = float(kd_loss(logits_on(prep.fm, out, inputs), teacher, 1.0))
    assert after < 0.7 * before  # distilled toward the clients' averaged logits


class Recording(InProcessRuntime):
    seen: list = []

    def send_and_receive(self, messages, timeout=None, on_reply=None):
        replies = super().send_and_receive(messages, timeout, on_reply)
        Recording.seen.append((dict(messages), dict(replies)))
        return replies


def test_fedmd_sends_no_parameters(base, tmp_path, monkeypatch):
    monkeypatch.setattr("fedgpt.experiment.InProcessRuntime", Recording)
    Recording.seen = []
    cfg = load_config(
        None,
        [
            *base,
            'federation.distill="fedmd"',
            "model.n_layer=3",
            "federation.fedmd_client_layers=1",
            "federation.distill_windows=4",
        ],
    )
    run_experiment(cfg, tmp_path / "r")
    prep = prepare(cfg)
    server_numel = prep.fm.spec.numel
    rounds = [(m, r) for m, r in Recording.seen if any(x.type == "fedmd/train" for x in m.values())]
    assert len(rounds) == 2
    for _msgs, replies in Recording.seen:
        for reply in replies.values():
            assert isinstance(reply, Message)
            assert "delta" not in reply.tensors and "weights" not in reply.tensors
            assert set(reply.tensors) <= {"logits"}  # evaluate replies carry sums only
            assert not reply.blobs
    for msgs, replies in rounds:
        for m in msgs.values():
            assert set(m.tensors) <= {"consensus"}  # no weights go down either
        shapes = {tuple(r.tensors["logits"].shape) for r in replies.values()}
        assert shapes == {(4, cfg.client.seq_len, prep.bundle.codec.vocab_size)}
    first, second = rounds[0][0], rounds[1][0]
    assert all("consensus" not in m.tensors for m in first.values())
    assert all("consensus" in m.tensors for m in second.values())
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    logit_bytes = 4 * 4 * cfg.client.seq_len * prep.bundle.codec.vocab_size
    assert rows[0]["bytes_up"] == logit_bytes * len(rows[0]["participants"])
    assert 0.0 <= rows[1]["personal_accuracy"] <= 1.0
    # the server's model (3 blocks) is the one saved; the clients' own had 1 block
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "r/model/model.safetensors")
    assert any(".h.2." in k for k in saved)
    assert sum(v.numel() for v in saved.values()) == server_numel


def test_fedmd_resume_keeps_the_consensus(base, tmp_path):
    from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint

    cfg = load_config(None, [*base, 'federation.distill="fedmd"', "federation.distill_windows=2"])
    run_experiment(cfg, tmp_path / "r")
    ck = load_checkpoint(latest_checkpoint(tmp_path / "r/checkpoints"))
    assert ck.server_state["fedmd.consensus"].shape[0] == 2
    assert "fedmd.seed" in ck.server_state


def test_fedmd_rounds_are_in_the_ledger(base, tmp_path):
    from typer.testing import CliRunner

    from fedgpt.cli.main import app

    cfg = load_config(None, [*base, 'federation.distill="fedmd"', "federation.distill_windows=2"])
    run_experiment(cfg, tmp_path / "r")
    entries = [json.loads(x) for x in (tmp_path / "r/ledger.jsonl").read_text().splitlines()]
    rounds = [e for e in entries if e.get("kind") == "round"]
    assert len(rounds) == 2 and all(len(e["updates"]) == 2 for e in rounds)
    assert CliRunner().invoke(app, ["verify", str(tmp_path / "r")]).exit_code == 0


def test_fedmd_client_models_survive_the_client_state_bytes(base):
    from fedgpt.build import build_client_app, prepare

    cfg = load_config(None, [*base, 'federation.distill="fedmd"', "federation.distill_windows=2"])
    prep = prepare(cfg)
    ids = list(prep.data)
    app = build_client_app(cfg, prep, ids)
    msg = Message(
        "fedmd/train",
        {"round": 1, "seed": 5, "windows": 2, "seq_len": cfg.client.seq_len, "steps": 1,
         "lr": 1e-3, "temperature": 1.0, "public_seed": 9, "max_tokens": 100},
    )  # fmt: skip
    assert app(ids[0], msg).type == "fedmd/logits"
    saved = app.state_dict()  # opaque bytes, what a runtime persists
    fresh = build_client_app(cfg, prep, ids)
    fresh.load_state_dict(saved)
    assert set(fresh.fedmd.models) == {ids[0]}
    assert torch.equal(fresh.fedmd.models[ids[0]], app.fedmd.models[ids[0]])
    assert not torch.equal(fresh.fedmd.models[ids[0]], prep.init)  # the client's own model
