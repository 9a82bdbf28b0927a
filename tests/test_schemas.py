"""Reply schemas (fedgpt.schemas): every malformed reply a client can send becomes a
dropout with a one-line reason, and the round aggregates exactly as if that client had not
answered. One test per shape that used to crash the server, a property-based test over
arbitrary replies (train, evaluate, SecAgg masked input and unmasking), and the same
checks for replies decoded from Flower's records."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgpt.build import server_for
from fedgpt.client.trainer import ClientData
from fedgpt.config import load_config
from fedgpt.federation.client_app import ClientApp
from fedgpt.models.build import build_char_gpt2
from fedgpt.models.params import bind_flat
from fedgpt.privacy.secagg import client as sa
from fedgpt.privacy.secagg.quantize import bits_for, encode
from fedgpt.privacy.secagg.server import run_round as secagg_round
from fedgpt.runtime import Failure, InProcessRuntime, Message
from fedgpt.schemas import Expect, check_reply

TEXT = "Blow, winds, and crack your cheeks! rage! blow!\nYou cataracts and hurricanoes, spout\n"
IDS = ["a", "b", "c", "d"]
BASE = [
    "model.n_layer=1",
    "model.n_embd=16",
    "model.n_head=2",
    "model.context=32",
    "client.local_steps=1",
    "client.batch_size=2",
    "client.seq_len=16",
    "federation.fraction=1.0",
    "federation.min_clients=1",
    "federation.rounds=1",
    "federation.eval_every=1",
    "federation.eval_max_chars=200",
]


def setup(*overrides, tamper=None, drop=None, fedmd=False, ckks=None):
    cfg = load_config(None, [*BASE, *overrides])
    bundle = build_char_gpt2(cfg.model, [TEXT], cfg.seed)
    fm = bind_flat(bundle.model)

    def enc(s):
        return torch.from_numpy(bundle.codec.encode(s))

    data = {c: ClientData(c, enc(TEXT * (i + 2)), enc(TEXT)) for i, c in enumerate(IDS)}
    secure, fedmd_client = [], None
    if ckks:
        from fedgpt.federation.secure_sum_client import CkksEncryption

        secure.append(CkksEncryption(ckks[0], expected=len(IDS)))
    public = enc(TEXT * 3) if fedmd else None
    if fedmd:
        from fedgpt.federation.fedmd import FedMDClient

        fedmd_client = FedMDClient(fm, fm.flat.clone(), public, cfg.client)
    app = ClientApp.build(fm, data, cfg.client, secure=secure, fedmd=fedmd_client)
    runtime = InProcessRuntime(app, drop, tamper=tamper)
    server = server_for(
        cfg, runtime, IDS, fm, public=public, vocab_size=bundle.codec.vocab_size,
        ckks_public=ckks[1] if ckks else None,
    )  # fmt: skip
    return server, fm.flat.clone()


def at(client, kind, fn):
    """A tamper hook replacing ``client``'s reply to a ``kind`` message by ``fn(reply)``."""

    def tamper(cid, msg, reply):
        if cid == client and msg.type == kind:
            return [(cid, fn(reply))]
        return [(cid, reply)]

    return tamper


def with_config(**changes):
    return lambda r: Message(r.type, {**r.config, **changes}, r.tensors, r.blobs)


def one_line(reason):
    assert isinstance(reason, str) and reason and "\n" not in reason and len(reason) <= 400
    return reason


def assert_dropped_alone(bad, kind, fn, *overrides, stage=None, match="", **kw):
    """``bad``'s ``kind`` reply replaced by ``fn(reply)``: the round completes, ``bad`` is
    dropped with a one-line reason, and the new weights (and evaluation) equal those of a
    round where ``bad`` never answered the ``stage`` message (default ``kind``)."""
    server, w0 = setup(*overrides, tamper=at(bad, kind, fn), **kw)
    state, result = server.run_round(server.init_state(w0))
    if kind == "evaluate":
        dropped = result.eval.get("dropped", [])
    else:
        dropped = result.dropped
        # a SecAgg client gone after its masked input is in the sum all the same
        assert (bad in result.participants) == (kind == "secagg/unmask")
    assert [d["client"] for d in dropped] == [bad], dropped
    assert match in one_line(dropped[0]["reason"]), dropped
    stage = stage or kind
    ref, _ = setup(*overrides, drop=lambda cid, typ: cid == bad and typ == stage, **kw)
    ref_state, ref_result = ref.run_round(ref.init_state(w0))
    assert torch.equal(state.weights, ref_state.weights)
    assert result.participants == ref_result.participants
    ev, ref_ev = dict(result.eval), dict(ref_result.eval)
    ev.pop("dropped", None)
    assert ev == ref_ev
    return result


# --- the shapes that used to crash the server ------------------------------------------


def test_train_loss_that_is_a_string():
    def fn(r):
        return with_config(metrics={**r.config["metrics"], "train_loss": "low"})(r)

    assert_dropped_alone("b", "train", fn, match="metrics.train_loss")


@pytest.mark.parametrize("metrics", ["fine", [1.0, 2.0], 3.5, {"train_loss": float("nan")}])
def test_metrics_that_are_not_a_dict_of_finite_numbers(metrics):
    assert_dropped_alone("c", "train", with_config(metrics=metrics), match="metrics")


@pytest.mark.parametrize("n", [10**400, True, 2.5, 0, -3, 2**53 + 1, "12"])
def test_num_examples_that_is_not_a_bounded_positive_int(n):
    assert_dropped_alone("a", "train", with_config(num_examples=n), match="num_examples")


@pytest.mark.parametrize("config", [[1, 2, 3], "round=1", None])
def test_config_that_is_not_a_dict(config):
    def fn(r):
        return Message(r.type, config, r.tensors, r.blobs)

    assert_dropped_alone("d", "train", fn, match="config is not a dict")


@pytest.mark.parametrize(
    "changes",
    [
        {"loss_sum": None},
        {"loss_sum": float("nan")},
        {"loss_sum": float("inf")},
        {"loss_sum": -1.0},
        {"count": -5},
        {"correct": 10**9},
        {"count": 10**400},
        {"correct": "many"},
        {"round": 99},
    ],
)
def test_malformed_evaluation_reply_is_skipped(changes):
    def fn(r):
        config = {k: v for k, v in {**r.config, **changes}.items() if v is not None}
        return Message(r.type, config, r.tensors, r.blobs)

    result = assert_dropped_alone("b", "evaluate", fn)
    assert "b" not in result.eval["per_client"] and "a" in result.eval["per_client"]


SECAGG = 'privacy.secure_aggregation="secagg"'


@pytest.mark.parametrize(
    "blobs",
    [{}, {"y": b"\x00" * 8}, {"y": []}, {"y": ["text"]}, {"y": [b"", b""]}, {"z": [b"1"]}],
)
def test_malformed_secagg_masked_input(blobs):
    def fn(r):
        return Message(r.type, r.config, {}, blobs)

    assert_dropped_alone("c", "secagg/masked", fn, SECAGG, match="secagg")


@pytest.mark.parametrize(
    "changes",
    [
        {"b": {"a": [2, "not hex"]}},
        {"b": {"a": [2]}},
        {"b": {"a": "2:ff"}},
        {"b": {"a": [True, "ff"]}},
        {"b": {"a": [1, "ff"]}},  # x is not the revealing client's index
        {"b": {"zed": [2, "ff"]}},  # a client it was not asked about
        {"b": ["a"]},
        {"s": {"a": [2, "ff", "zz"]}},
        {"tampered": "a"},
        {"tampered": [1]},
    ],
)
def test_malformed_secagg_shares_out(changes):
    # index of b is 2; d reveals shares of the others: replace them by garbage
    assert_dropped_alone("b", "secagg/unmask", with_config(**changes), SECAGG, match="secagg:")


@pytest.mark.parametrize(
    "changes",
    [{"metrics": "x"}, {"metrics": {"train_loss": "x"}}, {"num_examples": 10**400}, {"x": 1}],
)
def test_malformed_secagg_keys(changes):
    assert_dropped_alone("a", "secagg/train", with_config(**changes), SECAGG, match="secagg:")


def test_secagg_keys_with_a_config_that_is_not_a_dict():
    def fn(r):
        return Message(r.type, [r.config], r.tensors, r.blobs)

    assert_dropped_alone("d", "secagg/train", fn, SECAGG, match="config is not a dict")


@pytest.mark.parametrize(
    "reply",
    [
        lambda r: Message("train/result", r.config, r.tensors),
        lambda r: Message(r.type, r.config, {"aggregate": b"\x00" * 16}),
        lambda r: Message(r.type, r.config, {"aggregate": r.tensors["aggregate"][:-1]}),
        lambda r: Message(r.type, r.config, {"aggregate": r.tensors["aggregate"].double()}),
        lambda r: Message(r.type, [1], r.tensors),
        lambda r: Message(r.type, {**r.config, "round": 10**400}, r.tensors),
    ],
)
def test_malformed_ckks_aggregate_goes_to_the_next_key_holder(reply):
    pytest.importorskip("tenseal")
    from fedgpt.privacy.ckks import make_keys

    secret, public = make_keys()
    results = []
    for bad in (reply, None):
        tamper = at("a", "ckks/decrypt", bad) if bad else None
        drop = None if bad else (lambda cid, typ: cid == "a" and typ == "ckks/decrypt")
        server, w0 = setup(
            'privacy.secure_aggregation="ckks"', tamper=tamper, drop=drop, ckks=(secret, public)
        )
        results.append(server.run_round(server.init_state(w0)))
    (state, result), (ref_state, ref_result) = results
    assert result.participants == IDS and result.dropped == []
    # CKKS encryption is randomised: equal up to its noise
    assert torch.allclose(state.weights, ref_state.weights, atol=1e-5)
    assert not torch.equal(state.weights, w0)


@pytest.mark.parametrize(
    "fn",
    [
        lambda r: Message(r.type, r.config, {"logits": r.tensors["logits"][:, :, :-1]}),
        lambda r: Message(r.type, r.config, {"logits": r.tensors["logits"] * float("nan")}),
        lambda r: Message(r.type, r.config, {"logits": r.tensors["logits"].double()}),
        with_config(metrics={"own_count": "all"}),
        with_config(metrics=[1]),
        with_config(num_examples=10**400),
    ],
)
def test_malformed_fedmd_logits(fn):
    fedmd = [
        'federation.distill="fedmd"',
        "federation.distill_windows=2",
        'data.public_plays=["hamlet"]',
    ]
    assert_dropped_alone("b", "fedmd/train", fn, *fedmd, fedmd=True, match="")


def test_unbounded_strings_are_cut_or_refused():
    big = "x\n" * 5_000_000  # 10 MB
    fn = lambda r: Message("train/failure", {"round": 1, "reason": big})  # noqa: E731
    result = assert_dropped_alone("a", "train", fn, match="malformed train/failure")
    fn = lambda r: Message("train/failure", {"round": 1, "reason": "oom\n" * 1000})  # noqa: E731
    assert_dropped_alone("a", "train", fn, match="oom oom")
    assert_dropped_alone("b", "train", lambda r: Failure(big), match="x x")
    assert_dropped_alone("c", "train", lambda r: Message(big, r.config, r.tensors))
    assert_dropped_alone("d", "train", with_config(tier="t" * 10**6), match="tier")
    assert len(result.dropped[0]["reason"]) <= 300


# --- property-based: arbitrary replies never crash the server --------------------------

KEYS = [
    "round", "num_examples", "metrics", "nonce", "tier", "reason", "loss_sum", "correct",
    "count", "b", "s", "tampered", "train_loss", "update_norm", "a", "c", "",
]  # fmt: skip
NAMES = ["delta", "aggregate", "logits", "y", "c_pk", "s_pk", "to:a", "x"]
HUGE = st.sampled_from([10**400, -(10**30), 2**53 + 1, 2**63, float("nan"), float("inf")])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | HUGE
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["x" * 5000, "0xff", "ab", "c"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool]


@st.composite
def tensors(draw, numel):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.sampled_from([(numel,), (numel - 1,), (1, numel), (), (0,), (3, 2)]))
    t = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    if draw(st.booleans()) and t.numel():
        t.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), 1e30]))
    return t.to(dtype)


def payloads(numel):
    value = tensors(numel) | st.binary(max_size=8) | JSON
    blob = st.lists(st.binary(max_size=8 * (numel + 2)), max_size=3) | JSON | st.binary()
    return st.tuples(
        st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=4), value, max_size=3) | JSON,
        st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=4), blob, max_size=3) | JSON,
    )


@st.composite
def replies(draw, honest: Message, numel: int):
    """An arbitrary reply: honest with one field replaced, or random throughout."""
    types = st.sampled_from([honest.type, "train/failure", "evaluate/result"]) | st.text(
        max_size=30
    )
    tens, blobs = draw(payloads(numel))
    kind = draw(st.integers(0, 4))
    if kind == 0:  # one config field replaced (or added)
        key = draw(st.sampled_from(sorted(honest.config)) | st.sampled_from(KEYS))
        config = {**honest.config, key: draw(JSON)}
        return Message(honest.type, config, honest.tensors, honest.blobs)
    if kind == 1:  # a metric replaced
        metrics = {**honest.config.get("metrics", {}), draw(st.sampled_from(KEYS)): draw(JSON)}
        return Message(honest.type, {**honest.config, "metrics": metrics}, honest.tensors)
    if kind == 2:  # honest config, arbitrary payload
        return Message(honest.type, honest.config, tens, blobs)
    if kind == 3:
        return draw(st.builds(Failure, st.text(max_size=50) | st.just("x" * 10**6)))
    return Message(draw(types), draw(JSON), tens, blobs)


class Canned:
    """A runtime answering from precomputed honest replies; ``bad`` replaces one of them
    (``None``: that client does not answer). Nonces are echoed like the real client."""

    def __init__(self, honest):
        self.honest, self.bad = honest, {}

    def send_and_receive(self, messages, timeout=None, on_reply=None):
        out = {}
        for cid, msg in messages.items():
            if (cid, msg.type) in self.bad:
                reply = self.bad[(cid, msg.type)]
                if reply is None:
                    continue
            else:
                reply = self.honest[(cid, msg.type)]
                if "nonce" in msg.config:
                    reply = Message(reply.type, {**reply.config, "nonce": msg.config["nonce"]},
                                    reply.tensors, reply.blobs)  # fmt: skip
            out[cid] = reply
            if on_reply is not None:
                on_reply(cid, reply)
        return out

    def close(self):
        pass


@pytest.fixture(scope="module")
def canned_round():
    """A FederatedServer over canned honest train and evaluate replies, the initial
    state, and each (client, kind) reference result where that client did not answer."""
    server, w0 = setup()
    real, honest = server.runtime, {}

    def record(cid, msg, reply):
        honest[(cid, msg.type)] = reply
        return [(cid, reply)]

    real.tamper = record
    s0 = server.init_state(w0)
    server.run_round(s0)
    server.runtime = Canned(honest)
    refs = {}
    for kind in ("train", "evaluate"):
        server.runtime.bad = {("b", kind): None}
        refs[kind] = server.run_round(s0)
    server.runtime.bad = {}
    return server, s0, honest, refs


def _same(got, ref):
    (state, result), (ref_state, ref_result) = got, ref
    assert torch.equal(state.weights, ref_state.weights)
    assert result.participants == ref_result.participants
    assert result.train_loss == ref_result.train_loss
    ev, ref_ev = dict(result.eval), dict(ref_result.eval)
    ev.pop("dropped", None)
    assert ev == ref_ev


FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_arbitrary_train_and_evaluate_replies_never_crash_the_server(canned_round, kind):
    server, s0, honest, refs = canned_round
    numel = s0.weights.numel()
    good = honest[("b", kind)]
    expect = Expect("evaluate/result", 1) if kind == "evaluate" else None

    @FUZZ
    @given(replies(good, numel))
    def run(reply):
        server.runtime.bad = {("b", kind): reply}
        got = server.run_round(s0)
        if kind == "train":
            refused = "b" not in got[1].participants
            if refused:
                [d] = [d for d in got[1].dropped if d["client"] == "b"]
                one_line(d["reason"])
        else:
            refused = check_reply(reply, expect) is not None
        if refused:
            _same(got, refs[kind])

    start = time.perf_counter()
    run()
    assert time.perf_counter() - start < 120


N_SA, NUMEL = 5, 6
SA_IDS = [f"c{i}" for i in range(N_SA)]


class SecAggClients:
    """Honest SecAgg clients (privacy.secagg.client) with fixed inputs, no training; one
    client's reply to one stage replaced (``None``: no answer)."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = {c: encode(torch.randn(NUMEL, generator=gen), 0.5, 1.0, bits_for(N_SA))
                  for c in SA_IDS}  # fmt: skip
        self.store, self.bad = {}, {}

    def send_and_receive(self, messages, timeout=None, on_reply=None):
        out = {}
        for cid, msg in messages.items():
            if msg.type == "secagg/train":
                st_ = self.store[cid] = sa.advertise(msg.config["round"], self.x[cid])
                reply = sa.keys_message(st_, 10, {"train_loss": 1.0})
            else:
                reply = sa.handle(self.store, cid, msg)
            if (cid, msg.type) in self.bad:
                reply = self.bad[(cid, msg.type)]
                if reply is None:
                    continue
            out[cid] = reply
        return out


def go(rt):
    return secagg_round(
        rt, SA_IDS, 1, {c: 0 for c in SA_IDS}, torch.zeros(NUMEL), NUMEL, value_range=1.0,
        bits=bits_for(N_SA), weight_cap=10, threshold_fraction=0.5, k=0, graph_seed=0,
    )  # fmt: skip


@pytest.mark.parametrize(
    "stage,reply_type",
    [("secagg/masked", "secagg/masked_input"), ("secagg/unmask", "secagg/shares_out")],
)
def test_arbitrary_secagg_replies_never_crash_the_server(stage, reply_type):
    rt = SecAggClients()
    rt.bad = {("c2", stage): None}
    ref = go(rt)
    assert ref.failure is None
    honest = {
        "secagg/masked_input": Message(reply_type, {"round": 1}, {}, {"y": [b"\x00" * 56]}),
        "secagg/shares_out": Message(
            reply_type, {"round": 1, "b": {"c0": (3, "0xff")}, "s": {}, "tampered": []}
        ),
    }[reply_type]

    @FUZZ
    @given(replies(honest, NUMEL))
    def run(reply):
        rt.bad = {("c2", stage): reply}
        out = go(rt)
        mine = [d for d in out.dropped if d["client"] == "c2"]
        if mine:
            one_line(mine[0]["reason"])
            assert out.failure is None
            assert torch.equal(out.weighted_sum, ref.weighted_sum)
            assert (out.weight, out.survivors, out.metrics) == (
                ref.weight,
                ref.survivors,
                ref.metrics,
            )

    start = time.perf_counter()
    run()
    assert time.perf_counter() - start < 120


# --- replies decoded from Flower's records ---------------------------------------------


class FlowerWire:
    """Every reply of an in-process runtime through the Flower codec and back."""

    def __init__(self, inner):
        self.inner = inner

    def send_and_receive(self, messages, timeout=None, on_reply=None):
        from fedgpt.runtime.flower.codec import CodecError, roundtrip

        out = {}
        for cid, reply in self.inner.send_and_receive(messages, timeout).items():
            try:
                [(sender, got)] = roundtrip([(cid, reply)])
            except CodecError as exc:
                sender, got = cid, Failure(str(exc))
            out[sender] = got
            if on_reply is not None:
                on_reply(sender, got)
        return out

    def close(self):
        pass


@pytest.mark.parametrize(
    "fn,match",
    [
        (with_config(num_examples=10**400), "num_examples"),
        (with_config(metrics={"train_loss": float("nan")}), "metrics.train_loss"),
        (with_config(metrics="x"), "metrics"),
        (lambda r: Message(r.type, [1, 2], r.tensors), "config is not a dict"),
        (lambda r: Message(r.type, r.config, {"delta": r.tensors["delta"].half()}), "float32"),
        (lambda r: Message("train/failure", {"round": 1, "reason": "x" * 10**7}), "malformed"),
    ],
)
def test_malformed_replies_decoded_from_flower_records_are_dropped(fn, match):
    pytest.importorskip("flwr")
    runs = []
    for tamper, drop in (
        (at("b", "train", fn), None),
        (None, lambda c, t: c == "b" and t == "train"),
    ):
        server, w0 = setup(tamper=tamper, drop=drop)
        server.runtime = FlowerWire(server.runtime)
        runs.append(server.run_round(server.init_state(w0)))
    (state, result), (ref_state, ref_result) = runs
    assert [d["client"] for d in result.dropped] == ["b"]
    assert match in one_line(result.dropped[0]["reason"])
    assert torch.equal(state.weights, ref_state.weights)
    assert result.eval == ref_result.eval


def test_secagg_shares_decoded_from_flower_records_are_lists_and_still_valid():
    pytest.importorskip("flwr")
    from fedgpt.runtime.flower.codec import roundtrip

    share = Message("secagg/shares_out", {"round": 1, "b": {"a": (2, "0xff")}, "s": {}})
    [(_, got)] = roundtrip([("b", share)])
    assert got.config["b"]["a"] == [2, "0xff"]
    expect = Expect("secagg/shares_out", 1, survivors=frozenset("a"), index=2)
    assert check_reply(got, expect) is None
    assert "x is not" in check_reply(got, Expect("secagg/shares_out", 1, survivors={"a"}, index=3))


def test_update_norm_is_the_float64_norm_and_flags_every_non_finite_value():
    from fedgpt.schemas import l2_norm, not_finite

    x = torch.randn(100_003, generator=torch.Generator().manual_seed(0)) * 0.01
    exact = float(torch.linalg.vector_norm(x.double()))
    assert abs(l2_norm(x) - exact) <= 1e-6 * exact
    assert l2_norm(x.view(-1, 1).expand(-1, 2).t()) == pytest.approx(exact * 2**0.5, rel=1e-6)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[7] = bad
        assert not_finite(y)
    huge = x.clone()
    huge[7] = 1e30  # its square overflows float32; the update is finite and so is its norm
    assert l2_norm(huge) == pytest.approx(1e30, rel=1e-6)
    assert not not_finite(huge)
