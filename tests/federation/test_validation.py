"""Update validation (federation.loop.validate_reply and the reply-receiving step) and the
fault injector (runtime.faults): each bad reply is dropped with one reason and the rest of
the round aggregates exactly as if that client had simply not answered; crashes,
stragglers past the deadline, SecAgg clients vanishing after a stage; quorum retries."""

import json

import pytest
import torch
from conftest import TINY

from fedgpt.build import server_for
from fedgpt.client.trainer import ClientData
from fedgpt.config import load_config
from fedgpt.errors import ConfigError
from fedgpt.experiment import Hooks, run_experiment, run_round_with_retries
from fedgpt.federation.client_app import ClientApp
from fedgpt.federation.verify import verify_run
from fedgpt.models.build import build_char_gpt2
from fedgpt.models.params import bind_flat
from fedgpt.runtime import InProcessRuntime, Message
from fedgpt.runtime.faults import FaultInjector

TEXT = "Blow, winds, and crack your cheeks! rage! blow!\nYou cataracts and hurricanoes, spout\n"
IDS = ["a", "b", "c", "d"]


def setup(*overrides, tamper=None, faults=None, drop=None, ckks_public=None):
    cfg = load_config(
        None,
        [
            "model.n_layer=1",
            "model.n_embd=16",
            "model.n_head=2",
            "model.context=32",
            "client.local_steps=1",
            "client.batch_size=2",
            "client.seq_len=16",
            "federation.fraction=1.0",
            "federation.min_clients=1",
            "federation.rounds=9",
            "federation.eval_every=100",
            *overrides,
        ],
    )
    bundle = build_char_gpt2(cfg.model, [TEXT], cfg.seed)
    fm = bind_flat(bundle.model)

    def enc(s):
        return torch.from_numpy(bundle.codec.encode(s))

    data = {c: ClientData(c, enc(TEXT * (i + 2)), enc(TEXT)) for i, c in enumerate(IDS)}
    if faults == "config":
        faults = FaultInjector.from_config(cfg, IDS)
    runtime = InProcessRuntime(
        ClientApp.build(fm, data, cfg.client),
        drop,
        faults=faults,
        timeout=cfg.runtime.round_timeout or None,
        tamper=tamper,
    )
    return server_for(cfg, runtime, IDS, fm, ckks_public=ckks_public), fm.flat.clone()


def on(client, fn):
    """A tamper hook applying ``fn(reply)`` to ``client``'s training reply (a list of
    (sender, reply) arrivals)."""

    def tamper(cid, msg, reply):
        if cid == client and msg.type == "train":
            return fn(reply)
        return [(cid, reply)]

    return tamper


def with_delta(reply, delta, **config):
    return Message(reply.type, {**reply.config, **config}, {"delta": delta}, reply.blobs)


def assert_dropped_alone(bad, reason, tamper, *overrides):
    """``bad`` is dropped with ``reason``; everyone else is aggregated exactly as in a round
    where ``bad`` never answered."""
    server, w0 = setup(*overrides, tamper=tamper)
    state, result = server.run_round(server.init_state(w0))
    assert [d["client"] for d in result.dropped] == [bad], result.dropped
    assert reason in result.dropped[0]["reason"], result.dropped
    assert result.participants == [c for c in IDS if c != bad]
    ref, _ = setup(*overrides, drop=lambda cid, typ: cid == bad)
    ref_state, _ = ref.run_round(ref.init_state(w0))
    assert torch.equal(state.weights, ref_state.weights)
    return result


def test_wrong_shape_is_dropped():
    assert_dropped_alone(
        "b", "shape", on("b", lambda r: [("b", with_delta(r, r.tensors["delta"][:-1]))])
    )


def test_wrong_dtype_is_dropped():
    assert_dropped_alone(
        "c", "float32", on("c", lambda r: [("c", with_delta(r, r.tensors["delta"].half()))])
    )


def test_nan_or_inf_is_dropped():
    def poison(r):
        d = r.tensors["delta"].clone()
        d[3] = float("inf")
        d[5] = float("nan")
        return [("a", with_delta(r, d))]

    assert_dropped_alone("a", "NaN or inf", on("a", poison))


def test_update_norm_above_the_bound_is_dropped():
    big = on("d", lambda r: [("d", with_delta(r, r.tensors["delta"] * 1e6))])
    result = assert_dropped_alone("d", "max_update_norm", big, "federation.max_update_norm=100")
    assert "above" in result.dropped[0]["reason"]
    # switched off (both norm checks): the same update is aggregated
    server, w0 = setup(
        "federation.max_update_norm=0", "federation.norm_outlier_factor=0", tamper=big
    )
    assert server.run_round(server.init_state(w0))[1].participants == IDS


def test_wrong_round_number_is_dropped():
    assert_dropped_alone(
        "b", "expected 1", on("b", lambda r: [("b", with_delta(r, r.tensors["delta"], round=7))])
    )


def test_reply_from_a_client_not_addressed_is_dropped():
    server, w0 = setup(tamper=on("a", lambda r: [("a", r), ("mallory", r)]))
    state, result = server.run_round(server.init_state(w0))
    assert result.dropped == [{"client": "mallory", "reason": "reply from a client not addressed"}]
    assert result.participants == IDS
    ref, _ = setup()
    assert torch.equal(state.weights, ref.run_round(ref.init_state(w0))[0].weights)


def test_duplicate_sender_is_dropped():
    assert_dropped_alone("c", "duplicate sender: 2 replies", on("c", lambda r: [("c", r)] * 2))


def test_reply_replayed_from_an_earlier_round_is_dropped():
    kept = {}

    def replay(cid, msg, reply):
        if cid == "b" and msg.type == "train":
            kept.setdefault(msg.config["round"], reply)
            return [("b", kept[1])]
        return [(cid, reply)]

    server, w0 = setup(tamper=replay)
    state, _ = server.run_round(server.init_state(w0))
    _, result = server.run_round(state)
    assert result.dropped == [{"client": "b", "reason": "update for round 1, expected 2"}]
    assert result.participants == ["a", "c", "d"]


def test_reply_replayed_from_an_earlier_message_of_the_same_round_is_dropped():
    """A retried round sends fresh nonces: a reply to the first attempt does not count."""
    kept = []

    def replay(cid, msg, reply):
        if cid == "d" and msg.type == "train":
            kept.append(reply)
            return [("d", kept[0])]
        return [(cid, reply)]

    server, w0 = setup(tamper=replay)
    s0 = server.init_state(w0)
    assert server.run_round(s0)[1].participants == IDS
    _, result = server.run_round(s0)  # the same round again
    assert result.dropped[0]["client"] == "d" and "nonce" in result.dropped[0]["reason"]
    assert result.participants == ["a", "b", "c"]


def test_oversized_payload_is_dropped():
    def pad(r):
        return [("a", Message(r.type, r.config, {**r.tensors, "junk": torch.zeros(64)}))]

    assert_dropped_alone("a", "oversized payload", on("a", pad))


def test_undecodable_payload_is_dropped():
    def garbage(r):
        return [("b", Message(r.type, r.config, {"delta": b"\x00\xff" * 8}))]

    assert_dropped_alone("b", "does not decode", on("b", garbage))


def test_undecodable_secagg_masked_input_is_dropped():
    def cut(cid, msg, reply):
        if cid == "c" and reply.type == "secagg/masked_input":
            y = reply.blobs["y"][0][:-3]
            return [(cid, Message(reply.type, reply.config, {}, {**reply.blobs, "y": [y]}))]
        return [(cid, reply)]

    server, w0 = setup('privacy.secure_aggregation="secagg"', tamper=cut)
    _, result = server.run_round(server.init_state(w0))
    assert result.participants == ["a", "b", "d"]
    assert result.dropped == [{"client": "c", "reason": "secagg: masked input of wrong length"}]
    assert set(result.update_hashes) == set(IDS)  # every masked input as it arrived


def test_undecodable_ckks_ciphertext_is_dropped():
    pytest.importorskip("tenseal")
    from fedgpt.federation.secure_sum_client import CkksEncryption
    from fedgpt.privacy.ckks import make_keys

    def garble(r):
        chunks = [bytes(b ^ 0x5A for b in c) for c in r.blobs["delta_ckks"]]
        return [("a", Message(r.type, r.config, {}, {"delta_ckks": chunks}))]

    secret, public = make_keys()
    server, w0 = setup(
        'privacy.secure_aggregation="ckks"', tamper=on("a", garble), ckks_public=public
    )
    server.runtime.handler.secure["ckks"] = CkksEncryption(secret, expected=len(IDS))
    _, result = server.run_round(server.init_state(w0))
    assert result.participants == ["b", "c", "d"]
    assert result.dropped[0]["client"] == "a" and "unreadable" in result.dropped[0]["reason"]


# --- faults --------------------------------------------------------------------------


def test_crashing_clients_are_dropped_with_a_reason():
    server, w0 = setup('runtime.fail_clients=["b"]', faults="config")
    _, result = server.run_round(server.init_state(w0))
    assert result.participants == ["a", "c", "d"]
    assert result.dropped == [{"client": "b", "reason": "client crashed (fault injection)"}]


def test_straggler_misses_the_deadline_and_counts_without_one():
    late = ['runtime.straggle_clients=["c"]', "runtime.straggle_delay=60"]
    server, w0 = setup(*late, "runtime.round_timeout=30", faults="config")
    _, result = server.run_round(server.init_state(w0))
    assert result.participants == ["a", "b", "d"]
    assert "deadline of 30 s" in result.dropped[0]["reason"]
    server, w0 = setup(*late, faults="config")  # no deadline: late but counted
    assert server.run_round(server.init_state(w0))[1].participants == IDS


def test_fault_draws_are_seeded_per_round_and_attempt():
    inj = FaultInjector(seed=3, fail_fraction=0.5)
    ids = [f"c{i}" for i in range(200)]
    first = [c for c in ids if inj.fails(c, 1)]
    assert first == [c for c in ids if inj.fails(c, 1)] and 60 < len(first) < 140
    assert first != [c for c in ids if inj.fails(c, 2)]
    inj.attempt = 1
    assert first != [c for c in ids if inj.fails(c, 1)]


@pytest.mark.parametrize("stage", ["train", "share", "masked"])
def test_secagg_client_vanishing_after_a_stage(stage):
    server, w0 = setup(
        'privacy.secure_aggregation="secagg"',
        'runtime.fail_clients=["d"]',
        f'runtime.drop_after_stage="{stage}"',
        faults="config",
    )
    _, result = server.run_round(server.init_state(w0))
    # vanishing after sending its masked input, d's update is in the sum all the same
    assert result.participants == (IDS if stage == "masked" else ["a", "b", "c"])
    assert any(
        d["client"] == "d" and f"vanished after SecAgg stage '{stage}'" in d["reason"]
        for d in result.dropped
    )


def test_fault_settings_are_checked():
    cfg = load_config(None, ['runtime.drop_after_stage="share"'])
    with pytest.raises(ConfigError, match="secagg"):
        FaultInjector.from_config(cfg, IDS)
    cfg = load_config(None, ['runtime.fail_clients=["zed"]'])
    with pytest.raises(ConfigError, match="unknown client 'zed'"):
        FaultInjector.from_config(cfg, IDS)


class FailFirstAttempt(FaultInjector):
    def fails(self, cid, rnd):
        return cid == "a" and self.attempt == 0


def test_below_quorum_the_round_is_retried():
    server, w0 = setup(
        "runtime.min_replies=4", "runtime.round_retries=2", faults=FailFirstAttempt(seed=0)
    )
    s0 = server.init_state(w0)
    state, result, attempts = run_round_with_retries(
        server, s0, server.cfg, server.runtime.faults.set_attempt, Hooks()
    )
    assert attempts == 2 and result.below_quorum is None and result.participants == IDS
    assert state.round == 1 and not torch.equal(state.weights, w0)


def test_below_quorum_after_retries_the_run_stops_with_the_model_unchanged(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(
        None,
        [
            *TINY,
            "baselines.enabled=false",
            "data.max_clients=3",
            "runtime.fail_fraction=1.0",
            "runtime.min_replies=1",
            "runtime.round_retries=1",
        ],
    )
    summary = run_experiment(cfg, out)
    assert summary["rounds"] == 0 and "quorum not reached in round 1" in summary["stopped"]
    assert "after 2 attempt(s)" in summary["stopped"]
    assert (out / "metrics.jsonl").read_text() == ""
    v = verify_run(out)
    assert v.ok and v.rounds == 0, v.problems
    model, final = [json.loads(x) for x in (out / "ledger.jsonl").read_text().splitlines()[-2:]]
    assert final["kind"] == "final" and final["rounds_completed"] == 0
    assert "quorum not reached" in final["stopped"]
    from fedgpt.experiment import prepare
    from fedgpt.federation.ledger import weights_hash

    assert model["kind"] == "model" and model["weights"] == weights_hash(prepare(cfg).init)
