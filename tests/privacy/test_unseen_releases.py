"""Releases of a round a resumed run redoes stay charged: ``charge_unseen`` adds what a
later state of the same clients released beyond the restored one, once, and keeps it."""

from __future__ import annotations

import json

import pytest

from fedgpt.config import load_config
from fedgpt.privacy.dp_sgd import DPSGDTraining
from fedgpt.privacy.local_dp import LocalDPRelease, local_epsilon


def enc(obj) -> bytes:
    return json.dumps(obj).encode()


def test_local_dp_charges_a_lost_release_once_and_refuses_on_it():
    cfg = load_config(None, ['privacy.mode="local_dp"', "privacy.target_epsilon=4.3"]).privacy
    step = LocalDPRelease(cfg, 4.0)  # 3 releases: ε 4.01, 4 releases: 4.73
    step.load_state_dict({"releases": enc({"a": 2, "b": 1})})
    newer = {"releases": enc({"a": 3, "b": 1}), "releases_unseen": enc({"b": 1})}
    step.charge_unseen(newer)
    step.charge_unseen(newer)  # charging the same later state again adds nothing
    assert step.unseen == {"a": 1, "b": 1}
    ctx = type("Ctx", (), {"client_id": "a"})()
    assert step.admit(ctx) == "privacy budget exhausted"  # 2 + 1 lost + 1 > budget
    assert local_epsilon(4.0, 3, cfg.delta) <= 4.3 < local_epsilon(4.0, 4, cfg.delta)
    again = LocalDPRelease(cfg, 4.0)
    again.load_state_dict(step.state_dict())  # the charge survives the next snapshot
    assert again.unseen == {"a": 1, "b": 1}


def test_dp_sgd_charges_the_steps_of_a_lost_round():
    over = ['privacy.mode="dp_sgd"', "privacy.target_epsilon=50"]
    c = load_config(None, over)
    training = DPSGDTraining(c.client, c.privacy)
    training.load_state_dict({"dp_steps": enc({"a": [[1.0, 0.1]] * 2})})
    training.charge_unseen({"dp_steps": enc({"a": [[1.0, 0.1]] * 5})})
    assert training.unseen == {"a": [(1.0, 0.1)] * 3}
    assert json.loads(training.state_dict()["dp_unseen"]) == {"a": [[1.0, 0.1]] * 3}


def test_a_second_restart_from_an_older_checkpoint_keeps_every_release(tmp_path):
    """Snapshots of an abandoned attempt stay on the node's disk beside the redone ones:
    charging from every snapshot after the resume round counts each release once."""
    pytest.importorskip("flwr")
    from fedgpt.runtime.flower.node_state import NodeState

    cfg = load_config(None, ['privacy.mode="local_dp"']).privacy
    store = NodeState(tmp_path, "0" * 32, ["a"], keep=5)
    state = lambda n, unseen=None: (  # noqa: E731
        {"releases": enc({"a": n}), **({"releases_unseen": enc(unseen)} if unseen else {})}
    )
    for rnd in (1, 2, 3):  # attempt 1 releases in rounds 1, 2, 3; the server keeps round 1
        store.save(rnd, state(rnd))

    def resume() -> LocalDPRelease:
        step = LocalDPRelease(cfg, 4.0)
        step.load_state_dict(store.load(1))
        for later in store.after(1):
            step.charge_unseen(later)
        return step

    first = resume()
    assert first.unseen == {"a": 2}  # rounds 2 and 3 of attempt 1
    first.releases["a"] += 1  # attempt 2 redoes round 2 (a third release beyond round 1)
    store.save(2, first.state_dict())  # overwrites round 2; attempt 1's round 3 stays
    assert resume().unseen == {"a": 3}  # not 2: the redone round 2 is counted too
