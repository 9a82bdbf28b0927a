"""Everything the clients carry between rounds comes back on resume: a run stopped after
round k and resumed ends exactly as the uninterrupted run, and no client's privacy budget is
reset (DP-SGD with a target: the same refusals, the worst-client ε never above target)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import kill_in_round

from fedgpt.config import load_config
from fedgpt.experiment import run_experiment
from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint
from fedgpt.runner import resume_config

CASES = {
    "dp_sgd-target": ['privacy.mode="dp_sgd"', "privacy.noise_multiplier=1.0",
                      "privacy.target_epsilon=3", "federation.fraction=0.5"],
    "local_dp": ['privacy.mode="local_dp"', "privacy.noise_multiplier=0.5",
                 "privacy.reproducible_noise=true"],
    "keep_optimizer_state": ["client.keep_optimizer_state=true", 'client.optimizer="adamw"'],
    "fedmd": ['data.plays=["lear", "macbeth"]', 'data.public_plays=["macbeth"]',
              'federation.distill="fedmd"', "federation.distill_windows=4",
              "federation.fedmd_client_layers=1"],
}  # fmt: skip


def finish(run, rounds: int) -> None:
    run_experiment(resume_config(run, [f"federation.rounds={rounds}"]), run, resume=True)


def weights(run) -> torch.Tensor:
    return load_checkpoint(latest_checkpoint(run / "checkpoints")).weights


def rows(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("stop_after", [1, 2, 3])
def test_a_resumed_run_ends_as_the_uninterrupted_one(case, stop_after, tiny_overrides, tmp_path):
    over = [*tiny_overrides, "baselines.enabled=false", "federation.eval_every=100",
            "privacy.reproducible_noise=true", *CASES[case]]  # fmt: skip
    run_experiment(load_config(None, [*over, "federation.rounds=4"]), tmp_path / "whole")
    run_experiment(load_config(None, [*over, f"federation.rounds={stop_after}"]), tmp_path / "r")
    finish(tmp_path / "r", 4)
    assert torch.equal(weights(tmp_path / "r"), weights(tmp_path / "whole"))
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["resumed_after"] == [stop_after]
    report = (tmp_path / "r" / "report.md").read_text()
    assert f"resumed 1 time(s), after round(s) {stop_after}" in report
    keep = ("round", "participants", "dropped", "epsilon", "train_loss")
    got = [{k: r.get(k) for k in keep} for r in rows(tmp_path / "r")]
    assert got == [{k: r.get(k) for k in keep} for r in rows(tmp_path / "whole")]
    if case == "dp_sgd-target":  # every client's ε: within the target, as uninterrupted
        assert max(r["epsilon"] for r in rows(tmp_path / "r")) <= 3.0


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_run_killed_mid_round_resumes_to_the_uninterrupted_one(
    case, tiny_overrides, tmp_path, monkeypatch
):
    """The process dies in round 3 after the clients trained and the server aggregated,
    before the round's checkpoint: ``--resume`` redoes round 3 from round 2's checkpoint
    (server and client state) and ends exactly as the uninterrupted run."""
    from fedgpt.federation.loop import FederatedServer

    over = [*tiny_overrides, "baselines.enabled=false", "federation.eval_every=100",
            "privacy.reproducible_noise=true", "federation.rounds=4", *CASES[case]]  # fmt: skip
    run_experiment(load_config(None, over), tmp_path / "whole")
    real = FederatedServer.run_round
    monkeypatch.setattr(FederatedServer, "run_round", kill_in_round(real, 3, mid_round=True))
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(None, over), tmp_path / "r")
    monkeypatch.setattr(FederatedServer, "run_round", real)
    assert len(rows(tmp_path / "r")) == 2  # round 3 never reached the files
    finish(tmp_path / "r", 4)
    assert torch.equal(weights(tmp_path / "r"), weights(tmp_path / "whole"))
    keep = ("round", "participants", "dropped", "epsilon", "train_loss")
    got = [{k: r.get(k) for k in keep} for r in rows(tmp_path / "r")]
    assert got == [{k: r.get(k) for k in keep} for r in rows(tmp_path / "whole")]
