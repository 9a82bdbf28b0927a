"""The round loop over the in-process runtime: FedAvg of real client updates, failures
excluded with reasons, sampling seeded, evaluation token-weighted."""

import torch

from fedgpt.build import server_for
from fedgpt.client.trainer import ClientData, local_update
from fedgpt.config import load_config
from fedgpt.federation.client_app import ClientApp
from fedgpt.federation.sampling import clients_per_round, sample_clients
from fedgpt.federation.validation import validate_reply
from fedgpt.models.build import build_char_gpt2
from fedgpt.models.params import bind_flat
from fedgpt.runtime import Failure, InProcessRuntime, Message
from fedgpt.seeding import client_seed

TEXT = "Blow, winds, and crack your cheeks! rage! blow!\nYou cataracts and hurricanoes, spout\n"
POISON = "#"


def setup(overrides=()):
    cfg = load_config(
        None,
        [
            "model.n_layer=2",
            "model.n_embd=32",
            "model.n_head=2",
            "model.context=64",
            "client.local_steps=2",
            "client.batch_size=4",
            "client.seq_len=16",
            "federation.fraction=1.0",
            "federation.min_clients=1",
            "federation.rounds=2",
            "federation.eval_every=1",
            *overrides,
        ],
    )
    bundle = build_char_gpt2(cfg.model, [TEXT + POISON], cfg.seed)
    poison_id = int(bundle.codec.encode(POISON)[0])

    def nan_on_poison(module, args, output):  # data that yields NaN
        return output.masked_fill((args[0] == poison_id).unsqueeze(-1), float("nan"))

    bundle.model.transformer.wte.register_forward_hook(nan_on_poison)
    fm = bind_flat(bundle.model)
    enc = lambda s: torch.from_numpy(bundle.codec.encode(s))  # noqa: E731
    data = {
        "a": ClientData("a", enc(TEXT * 3), enc(TEXT)),
        "b": ClientData("b", enc(TEXT[::-1] * 6), enc(TEXT[:40])),
        "bad": ClientData("bad", enc(POISON * 200), enc(TEXT)),
    }
    server = server_for(
        cfg, InProcessRuntime(ClientApp.build(fm, data, cfg.client)), list(data), fm
    )
    return cfg, fm, data, server


def test_round_averages_valid_updates_and_reports_nan_client():
    cfg, fm, data, server = setup()
    w0 = fm.flat.clone()
    state = server.init_state(w0)
    state, result = server.run_round(state)
    assert result.participants == ["a", "b"]
    assert result.dropped[0]["client"] == "bad" and "non-finite" in result.dropped[0]["reason"]
    # the aggregate is the n_k-weighted mean of the clients' own deltas
    ups = [
        local_update(
            fm,
            w0,
            data[c].train,
            cfg.client,
            torch.Generator().manual_seed(client_seed(cfg.seed, 1, c)),
            c,
            1,
        )
        for c in ("a", "b")
    ]
    n = torch.tensor([float(u.num_examples) for u in ups])
    expected = w0 + (n[0] * ups[0].delta + n[1] * ups[1].delta) / n.sum()
    assert torch.allclose(state.weights, expected, atol=1e-6)
    assert result.bytes_down == 3 * w0.numel() * 4 and result.bytes_up == 2 * w0.numel() * 4
    assert result.eval["test_accuracy"] is not None and result.row()["test_loss"] > 0
    state2, result2 = server.run_round(state)
    assert state2.round == 2 and not torch.equal(state2.weights, state.weights)


def test_all_clients_failing_leaves_model_unchanged():
    cfg, fm, data, server = setup()
    server.client_ids = ["bad"]
    state = server.init_state(fm.flat.clone())
    new, result = server.run_round(state)
    assert torch.equal(new.weights, state.weights) and result.participants == []
    assert result.train_loss is None and len(result.dropped) == 1


def test_evaluation_is_token_weighted():
    cfg, fm, data, server = setup()
    w = fm.flat.clone()
    ev = server.evaluate(w, 0, ["a", "b"])
    pa, pb = ev["per_client"]["a"], ev["per_client"]["b"]
    want = (pa["loss"] * pa["count"] + pb["loss"] * pb["count"]) / (pa["count"] + pb["count"])
    assert abs(ev["test_loss"] - want) < 1e-9 and ev["tokens"] == pa["count"] + pb["count"]


def test_sampling_is_seeded_and_sized():
    ids = [f"c{i}" for i in range(100)]
    assert clients_per_round(100, 0.025, 2) == 3 and clients_per_round(3, 0.01, 5) == 3
    a = sample_clients(ids, 4, 0, 0.1, 1)
    assert a == sample_clients(ids, 4, 0, 0.1, 1) and len(a) == 10 and len(set(a)) == 10
    assert a != sample_clients(ids, 5, 0, 0.1, 1)


def test_validate_reply_rejects_bad_updates():
    ok = Message("train/result", {"round": 2, "num_examples": 5}, {"delta": torch.zeros(4)})
    assert validate_reply(ok, 2, 4) is None
    assert "round" in validate_reply(ok, 3, 4)
    assert "shape" in validate_reply(ok, 2, 5)
    nan = Message(
        "train/result",
        {"round": 2, "num_examples": 5},
        {"delta": torch.tensor([0.0, float("inf"), 0, 0])},
    )
    assert "NaN" in validate_reply(nan, 2, 4)
    assert validate_reply(Failure("timeout"), 2, 4) == "timeout"
    half = Message(
        "train/result",
        {"round": 2, "num_examples": 5},
        {"delta": torch.zeros(4, dtype=torch.float16)},
    )
    assert "float32" in validate_reply(half, 2, 4)


def test_bfloat16_broadcast_halves_the_bytes_down_and_updates_are_taken_against_it():
    """federation.broadcast_dtype = bfloat16: the weights go down rounded (half the bytes);
    each client's update is taken against the weights it received, so the new global
    weights are w0 + the mean of those updates, not of updates against w0."""
    cfg, fm, data, server = setup(["federation.broadcast_dtype=bfloat16"])
    w0 = fm.flat.clone()
    state = server.init_state(w0)
    state, result = server.run_round(state)
    assert result.participants == ["a", "b"]
    assert result.bytes_down == 3 * w0.numel() * 2 and result.bytes_up == 2 * w0.numel() * 4
    start = w0.to(torch.bfloat16).float()
    assert not torch.equal(start, w0)  # the rounding is real
    ups = [
        local_update(
            fm,
            start,
            data[c].train,
            cfg.client,
            torch.Generator().manual_seed(client_seed(cfg.seed, 1, c)),
            c,
            1,
        )  # fmt: skip
        for c in ("a", "b")
    ]
    n = torch.tensor([float(u.num_examples) for u in ups])
    expected = w0 + (n[0] * ups[0].delta + n[1] * ups[1].delta) / n.sum()
    assert torch.allclose(state.weights, expected, atol=1e-6)
    assert state.weights.dtype == torch.float32  # the server keeps float32 weights
    assert result.eval["bytes_down"] == 3 * w0.numel() * 2


def test_broadcast_dtype_float32_sends_the_server_weights_themselves():
    cfg, fm, data, server = setup()
    w0 = fm.flat.clone()
    state = server.init_state(w0)
    msgs, _ = server.strategy.secure_sum._messages(state, ["a", "b"])
    assert all(m.tensors["weights"] is state.weights for m in msgs.values())  # no copy
