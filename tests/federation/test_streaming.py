"""Streaming aggregation (federation.streaming, aggregation.stream): the server folds each
update into the aggregate as it arrives and lets it go. Same weights as holding every
update; no more than the holdback of updates alive at once, whatever the cohort; the
norm-outlier rule and duplicate senders settled as on the held path, or the round failed
in one line where that is impossible."""

import gc
import weakref

import pytest
import torch

from fedgpt.aggregation.stream import Sketch
from fedgpt.build import server_for
from fedgpt.client.trainer import ClientData
from fedgpt.config import load_config
from fedgpt.federation.client_app import ClientApp
from fedgpt.models.build import build_char_gpt2
from fedgpt.models.params import bind_flat
from fedgpt.runtime import InProcessRuntime, Message

TEXT = "Blow, winds, and crack your cheeks! rage! blow!\nYou cataracts and hurricanoes, spout\n"


def setup(*overrides, clients=6, tamper=None, track=None):
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
            "federation.rounds=3",
            "federation.eval_every=100",
            "runtime.threads=1",
            *overrides,
        ],
    )
    ids = [f"c{i}" for i in range(clients)]
    bundle = build_char_gpt2(cfg.model, [TEXT], cfg.seed)
    fm = bind_flat(bundle.model)

    def enc(s):
        return torch.from_numpy(bundle.codec.encode(s))

    data = {c: ClientData(c, enc(TEXT * (i + 2)), enc(TEXT)) for i, c in enumerate(ids)}
    app = ClientApp.build(fm, data, cfg.client)
    handler = app if track is None else track(app)
    runtime = InProcessRuntime(handler, tamper=tamper)
    return server_for(cfg, runtime, ids, fm), fm.flat.clone()


def run(*overrides, rounds=3, **kw):
    server, w0 = setup(*overrides, **kw)
    state = server.init_state(w0)
    results = []
    for _ in range(rounds):
        state, r = server.run_round(state)
        results.append(r)
    return state, results


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ['devices.tiers={c0 = "embeddings", c3 = "top_blocks:1"}'],
        [
            'privacy.mode="central_dp"',
            "privacy.reproducible_noise=true",
            "privacy.noise_multiplier=0.5",
            "privacy.clip_norm=0.5",
        ],
    ],  # fmt: skip
    ids=["fedavg", "tiers", "central_dp"],
)
def test_streaming_gives_the_weights_of_the_held_path(extra):
    one = [run(f"federation.streaming={s}", *extra, rounds=1)[0] for s in ("false", "true")]
    # sums in another order round differently: ~6e-8 after a round, which later rounds'
    # training amplifies (up to 4e-5 after three)
    assert torch.allclose(one[0].weights, one[1].weights, atol=1e-6)
    held, rh = run("federation.streaming=false", *extra)
    streamed, rs = run("federation.streaming=true", *extra)
    assert torch.allclose(held.weights, streamed.weights, atol=2e-4)
    assert not torch.equal(held.weights, setup(*extra)[1])  # the rounds moved the weights
    for a, b in zip(rh, rs, strict=True):
        assert a.participants == b.participants
        assert a.heterogeneity.keys() == b.heterogeneity.keys()
        for c in a.heterogeneity:  # exact sketch for a model this small
            assert a.heterogeneity[c]["cos"] == pytest.approx(b.heterogeneity[c]["cos"], abs=1e-4)
            assert a.heterogeneity[c]["rel"] == pytest.approx(b.heterogeneity[c]["rel"], abs=1e-4)


def tracker(alive: list):
    """A handler wrapper recording, when each client starts training, how many earlier
    updates are still alive in the process."""
    refs: list[weakref.ref] = []

    def track(app):
        def handler(cid, msg):
            if msg.type == "train":
                gc.collect()
                alive.append(sum(r() is not None for r in refs))
            reply = app(cid, msg)
            if "delta" in reply.tensors:
                refs.append(weakref.ref(reply.tensors["delta"]))
            return reply

        return handler

    return track


@pytest.mark.parametrize(
    ("streaming", "factor", "most"), [(True, 0, 0), (True, 10, 2), (False, 10, 11)]
)
def test_a_round_holds_no_more_updates_than_the_holdback(streaming, factor, most):
    alive: list[int] = []
    run(
        f"federation.streaming={str(streaming).lower()}",
        f"federation.norm_outlier_factor={factor}",
        "federation.outlier_holdback=2",
        rounds=1,
        clients=12,
        track=tracker(alive),
    )
    assert len(alive) == 12
    assert max(alive) == most  # held path: every earlier update; streaming: the holdback


def scale(clients: set[str], by: float):
    def tamper(cid, msg, reply):
        if cid in clients and msg.type == "train" and isinstance(reply, Message):
            d = reply.tensors["delta"] * by
            return [(cid, Message(reply.type, reply.config, {"delta": d}, reply.blobs))]
        return [(cid, reply)]

    return tamper


def test_outliers_within_the_holdback_are_refused_as_on_the_held_path():
    common = ("federation.norm_outlier_factor=10", "federation.outlier_holdback=2")
    tamper = scale({"c1", "c4"}, 1000.0)
    held, rh = run("federation.streaming=false", *common, rounds=1, tamper=tamper)
    streamed, rs = run("federation.streaming=true", *common, rounds=1, tamper=tamper)
    assert torch.allclose(held.weights, streamed.weights, atol=1e-6)
    assert rs[0].participants == ["c0", "c2", "c3", "c5"]
    assert sorted(d["client"] for d in rs[0].dropped) == ["c1", "c4"]
    assert all("over 10x the median" in d["reason"] for d in rs[0].dropped)


def test_more_outliers_than_the_holdback_fail_the_round_in_one_line():
    state, res = run(
        "federation.streaming=true",
        "federation.norm_outlier_factor=10",
        "federation.outlier_holdback=1",
        rounds=1,
        tamper=scale({"c1", "c4"}, 1000.0),
    )
    assert res[0].participants == []
    reasons = [d["reason"] for d in res[0].dropped if d["client"] == "*"]
    assert reasons == [
        "round failed: 2 updates are norm outliers, more than federation.outlier_holdback = 1; "
        "nothing is aggregated this round"
    ]
    assert torch.equal(state.weights, setup()[1])  # nothing applied


def twice(client: str, second):
    def tamper(cid, msg, reply):
        if cid == client and msg.type == "train":
            return [(cid, reply), (cid, second(reply))]
        return [(cid, reply)]

    return tamper


def test_an_identical_second_reply_is_taken_back_out():
    alone, _ = run("federation.streaming=true", rounds=1, clients=5)
    dup, res = run(
        "federation.streaming=true", rounds=1, clients=6, tamper=twice("c5", lambda r: r)
    )
    assert res[0].participants == ["c0", "c1", "c2", "c3", "c4"]
    assert {"client": "c5", "reason": "duplicate sender: 2 replies to one message"} in res[
        0
    ].dropped
    assert torch.allclose(alone.weights, dup.weights, atol=1e-6)


def test_a_different_second_reply_while_held_back_is_refused_alone():
    def other(r):
        return Message(r.type, r.config, {"delta": r.tensors["delta"] * 2}, r.blobs)

    _, res = run("federation.streaming=true", rounds=1, tamper=twice("c2", other))
    assert res[0].participants == ["c0", "c1", "c3", "c4", "c5"]
    assert res[0].dropped == [
        {"client": "c2", "reason": "duplicate sender: 2 replies to one message"}
    ]


def test_a_different_second_reply_after_folding_fails_the_round():
    def other(r):
        return Message(r.type, r.config, {"delta": r.tensors["delta"] * 2}, r.blobs)

    state, res = run(
        "federation.streaming=true",
        "federation.norm_outlier_factor=0",  # nothing held back: c2's first is folded at once
        rounds=1,
        tamper=twice("c2", other),
    )
    assert res[0].participants == []
    assert any("sent a second, different update" in d["reason"] for d in res[0].dropped)
    assert torch.equal(state.weights, setup()[1])


def test_the_sketch_estimates_dissimilarity_of_a_large_model():
    g = torch.Generator().manual_seed(0)
    p = 2_000_000
    base = torch.randn(p, generator=g)
    deltas = [base + s * torch.randn(p, generator=g) for s in (0.3, 1.0, 3.0)]
    agg = torch.stack(deltas).mean(0)
    sketch = Sketch(p, 65_536, torch.Generator().manual_seed(1))
    assert not sketch.exact
    for i, d in enumerate(deltas):
        sketch.add(str(i), d, float(d.norm()))
    got = sketch.dissimilarity(agg)
    for i, d in enumerate(deltas):
        rel = float((d - agg).norm() / agg.norm())
        cos = float(d @ agg / (d.norm() * agg.norm()))
        assert got[str(i)][0] == pytest.approx(rel, rel=0.03)
        assert got[str(i)][1] == pytest.approx(cos, abs=0.02)


@pytest.mark.parametrize(
    "overrides, why",
    [
        (['federation.aggregator={kind="median"}'], "the median aggregator needs every update"),
        (["federation.streaming=false"], "federation.streaming = false"),
    ],
)
def test_a_cohort_larger_than_the_held_cap_is_refused_before_any_round(overrides, why):
    from fedgpt.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        setup("federation.max_held_updates=5", *overrides, clients=6)
    msg = str(err.value)
    assert "\n" not in msg and "max_held_updates = 5" in msg and "samples 6 clients" in msg
    assert why in msg
    setup("federation.max_held_updates=6", *overrides, clients=6)  # at the cap: accepted


def test_the_held_cap_does_not_bound_a_streaming_rule():
    server, _ = setup("federation.max_held_updates=1", clients=6)
    assert server.strategy.stream


def test_the_round_sketches_stay_within_their_budget_in_a_large_cohort():
    from fedgpt.aggregation import AGGREGATORS, ServerContext
    from fedgpt.federation.streaming import SKETCH_BUDGET, SKETCH_SIZE, Folder

    cls = AGGREGATORS.get("fedavg")
    agg = cls(cls.Config(kind="fedavg"), ServerContext())
    gen = torch.Generator().manual_seed(0)
    small = Folder(agg, {}, 4_000, 1, gen, cohort=1000)
    assert small.sketch.exact  # a model below the per-client size is still exact
    big = Folder(agg, {}, 1_000_000, 1, gen, cohort=1000)
    delta = torch.randn(1_000_000, generator=gen)
    big.add("c0", delta, 1.0, float(delta.norm()))
    held = big.sketch.rows["c0"][1].numel()
    assert held * 1000 <= SKETCH_BUDGET and held < SKETCH_SIZE
    few = Folder(agg, {}, 1_000_000, 1, gen, cohort=4)
    few.add("c0", delta, 1.0, float(delta.norm()))
    assert few.sketch.stride == -(-1_000_000 // SKETCH_SIZE)  # the full per-client size
