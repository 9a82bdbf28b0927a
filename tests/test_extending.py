"""docs/architecture.md's worked examples, run exactly as written: each is one new module
(written here to a folder of its own, outside the package) plus its registration line,
then selected by configuration alone."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY

from fedgpt.build import build_client_app, build_server, load_run_config, make_privacy, prepare
from fedgpt.errors import ConfigError
from fedgpt.experiment import run_experiment
from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint
from fedgpt.runner import Runner

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BASE = [*TINY, "baselines.enabled=false", "federation.min_clients=4", "data.max_clients=6"]


def example(name: str) -> str:
    m = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"docs/architecture.md lost its {name} example"
    return m.group(1)


@pytest.fixture
def module(tmp_path, monkeypatch):
    """Import a docs example as a module of the user's own (one new file)."""

    def load(name: str):
        (tmp_path / f"user_{name}.py").write_text(example(name))
        monkeypatch.syspath_prepend(str(tmp_path))
        return importlib.import_module(f"user_{name}")

    yield load
    for name in [m for m in sys.modules if m.startswith("user_")]:
        del sys.modules[name]


def run(tmp_path, name: str, *sets: str) -> tuple[torch.Tensor, list[dict]]:
    cfg = load_run_config(None, [*BASE, *sets, f'out_dir="{tmp_path}"'])
    run_experiment(cfg, tmp_path / name)
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return load_checkpoint(latest_checkpoint(tmp_path / name / "checkpoints")).weights, rows


def test_a_new_rule(module, tmp_path):
    from fedgpt.aggregation import AGGREGATORS

    module("rule")
    try:
        w, rows = run(tmp_path, "r", 'federation.aggregator={kind = "mean_of_medians", groups = 2}')
        ref, _ = run(tmp_path, "f", 'federation.aggregator="fedavg"')
        assert len(rows) == 2 and all(len(r["participants"]) == 4 for r in rows)
        assert not torch.equal(w, ref)  # the rule did the aggregating
        with pytest.raises(ConfigError, match="needs individual updates"):
            load_run_config(None, ['federation.aggregator="mean_of_medians"',
                                   'privacy.secure_aggregation="secagg"'])  # fmt: skip
    finally:
        AGGREGATORS.unregister("mean_of_medians")


def test_a_new_server_optimizer(module, tmp_path):
    from fedgpt.aggregation import SERVER_OPTIMIZERS

    module("optimizer")
    try:
        one = ["federation.rounds=1", "federation.eval_every=1"]
        w1, _ = run(tmp_path, "d1", *one, 'federation.server_optimizer="fedavg_decay"')
        ref1, _ = run(tmp_path, "f1", *one, 'federation.server_optimizer="fedavg"')
        assert torch.equal(w1, ref1)  # t = 1: eta / sqrt(1) = eta
        w2, _ = run(tmp_path, "d2", 'federation.server_optimizer="fedavg_decay"')
        ref2, _ = run(tmp_path, "f2", 'federation.server_optimizer="fedavg"')
        assert not torch.equal(w2, ref2)  # t = 2: a smaller step
        state = load_checkpoint(latest_checkpoint(tmp_path / "d2" / "checkpoints")).server_state
        assert float(state["t"]) == 2.0  # its state is checkpointed
    finally:
        SERVER_OPTIMIZERS.unregister("fedavg_decay")


def test_a_new_privacy_mechanism(module, tmp_path):
    from fedgpt.privacy.mechanism import PRIVACY

    mod = module("mechanism")
    try:
        seen = []
        inner = mod.Clipped.aggregate

        def spy(self, state, updates, gen):
            out = inner(self, state, updates, gen)
            seen.append((float(updates.deltas.norm(dim=1).max()), float(out.delta.norm())))
            return out

        mod.Clipped.aggregate = spy
        _, rows = run(tmp_path, "m", 'privacy.mode="server_clip"', "client.lr=0.05")
        assert seen and "epsilon" not in rows[-1]  # ran; no DP claimed
        assert all(raw > 1.0 for raw, _ in seen)  # updates the clip had to shorten
        assert all(agg <= 1.0 + 1e-5 for _, agg in seen)  # a mean of norm-1 updates
        with pytest.raises(ConfigError, match="clips each update on the server"):
            load_run_config(None, ['privacy.mode="server_clip"',
                                   'privacy.secure_aggregation="secagg"'])  # fmt: skip
    finally:
        PRIVACY.unregister("server_clip")


def test_a_new_client_step(module, tmp_path):
    from fedgpt.privacy.mechanism import PRIVACY

    mod = module("client_step")
    try:
        seen = []
        inner = mod.ClipOnClient.after

        def spy(self, ctx, update):
            out = inner(self, ctx, update)
            seen.append((float(update.delta.norm()), float(out.delta.norm())))
            return out

        mod.ClipOnClient.after = spy
        secagg = ['privacy.secure_aggregation="secagg"', "client.lr=0.05"]
        _, rows = run(tmp_path, "s", 'privacy.mode="client_clip"', *secagg)
        assert len(seen) == 8 and "epsilon" not in rows[-1]  # 4 clients x 2 rounds; no DP
        assert all(raw > 1.0 for raw, _ in seen)  # updates the clip had to shorten
        assert all(abs(out - 1.0) < 1e-5 for _, out in seen)  # what left the clients
        assert all(len(r["participants"]) == 4 for r in rows)  # under SecAgg
    finally:
        PRIVACY.unregister("client_clip")


def test_a_new_task(module, tmp_path):
    from fedgpt.tasks import TASKS

    module("task")
    try:
        _, rows = run(tmp_path, "t", 'task.kind="last_token"')
        _, ref = run(tmp_path, "c", 'task.kind="causal_lm"')
        assert [r["train_loss"] for r in rows] != [r["train_loss"] for r in ref]
        assert rows[-1]["test_accuracy"] is not None
    finally:
        TASKS.unregister("last_token")


def test_a_new_runtime(module, tmp_path):
    mod = module("runtime")
    cfg = load_run_config(None, [*BASE, f'out_dir="{tmp_path}"'])
    prep = prepare(cfg)
    ids = list(prep.data)
    privacy = make_privacy(cfg, len(ids))
    app = build_client_app(cfg, prep, ids, privacy.z)
    server, privacy, _ = build_server(cfg, prep, mod.SequentialRuntime(app), ids, privacy=privacy)
    Runner(cfg, prep, server, privacy, tmp_path / "s").run()
    got = load_checkpoint(latest_checkpoint(tmp_path / "s" / "checkpoints")).weights
    ref, _ = run(tmp_path, "in-process")
    assert torch.equal(got, ref)
