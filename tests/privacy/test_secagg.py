"""SecAgg / SecAgg+: exact sums under dropouts at both critical steps, clean failure below
threshold, masks hide inputs, tampered shares rejected, a whole run matches plaintext."""

import json

import numpy as np
import pytest
import torch
from conftest import caesar_clients
from safetensors.torch import load_file

from fedgpt.config import ClientConfig, load_config
from fedgpt.errors import ConfigError
from fedgpt.experiment import run_experiment
from fedgpt.federation.client_app import ClientApp
from fedgpt.privacy.secagg import shamir
from fedgpt.privacy.secagg.client import advertise, unmask
from fedgpt.privacy.secagg.quantize import WORDS, bits_for, decode, encode
from fedgpt.privacy.secagg.server import neighbours, run_round
from fedgpt.runtime import InProcessRuntime, Message

N = 10


def setup(drop=None, tamper=None, word=64):
    fm, data = caesar_clients(N)
    app = ClientApp.build(fm, data, ClientConfig(local_steps=1, batch_size=2, seq_len=16))
    inputs, masked = {}, {}

    def handler(cid, msg):
        if tamper is not None:
            msg = tamper(cid, msg)
        reply = app(cid, msg)
        if msg.type == "secagg/train":
            inputs[cid] = app.secure["secagg"].rounds[cid].x.copy()
        if msg.type == "secagg/masked":
            masked[cid] = np.frombuffer(reply.blobs["y"][0], dtype=WORDS[word])
        return reply

    return fm, InProcessRuntime(handler, drop), inputs, masked


def go(runtime, fm, k=0, pq=False, word=64):
    ids = [f"c{i}" for i in range(N)]
    return run_round(
        runtime,
        ids,
        1,
        {c: i for i, c in enumerate(ids)},
        fm.flat.clone(),
        fm.flat.numel(),
        value_range=1.0,
        bits=bits_for(N, word),
        weight_cap=1000,
        threshold_fraction=0.5,
        k=k,
        graph_seed=0,
        post_quantum=pq,
        word=word,
    )


@pytest.mark.parametrize("stage", ["secagg/masked", "secagg/unmask"])
# t is more than half of a client's neighbours: the complete graph (9 neighbours, t = 5)
# survives 3 dropouts, SecAgg+ with 6 neighbours (t = 4) survives 2 among any client's
@pytest.mark.parametrize("k,fraction", [(0, 0.0), (0, 0.1), (0, 0.3), (6, 0.1), (6, 0.2)])
def test_sum_is_exact_with_dropouts(stage, fraction, k):
    gone = {f"c{i}" for i in range(int(round(fraction * N)))}
    fm, rt, inputs, _ = setup(drop=lambda cid, typ: cid in gone and typ == stage)
    out = go(rt, fm, k)
    assert out.failure is None, out.failure
    # dropped before sending masked input: not in the sum; dropped at unmasking: in it
    expect_in = sorted(set(inputs) - gone) if stage == "secagg/masked" else sorted(inputs)
    assert out.survivors == expect_in
    total = np.zeros_like(next(iter(inputs.values())))
    for c in expect_in:
        total += inputs[c]
    want_sum, want_w = decode(total, len(expect_in), 1.0, bits_for(N))
    assert torch.equal(out.weighted_sum, want_sum) and out.weight == want_w
    assert len(out.dropped) == len(gone)


@pytest.mark.parametrize("stage", ["secagg/masked", "secagg/unmask"])
def test_post_quantum_hybrid_sum_is_exact_with_dropouts(stage):
    gone = {"c1", "c4", "c7"}
    fm, rt, inputs, _ = setup(drop=lambda cid, typ: cid in gone and typ == stage)
    out = go(rt, fm, 6, pq=True)
    assert out.failure is None, out.failure
    expect_in = sorted(set(inputs) - gone) if stage == "secagg/masked" else sorted(inputs)
    total = np.zeros_like(inputs["c0"])
    for c in expect_in:
        total += inputs[c]
    assert torch.equal(out.weighted_sum, decode(total, len(expect_in), 1.0, bits_for(N))[0])
    # the hybrid mode advertises two 1,184-byte ML-KEM-768 keys on top of the X25519 ones
    keys = advertise(1, np.zeros(2, dtype=np.uint64), post_quantum=True).public_keys()
    assert [len(keys[k][0]) for k in ("c_pk", "s_pk", "kc_pk", "ks_pk")] == [32, 32, 1184, 1184]


@pytest.mark.parametrize("stage", ["secagg/masked", "secagg/unmask"])
def test_the_32_bit_word_sums_exactly_with_dropouts_in_half_the_bytes(stage):
    """privacy.secagg_word = 32: masks, sums and unmasking over Z_2^32; the masked input
    is 4 bytes per value, and the sum decodes exactly as the inputs' own sum does."""
    gone = {"c2", "c5"}
    fm, rt, inputs, masked = setup(drop=lambda cid, typ: cid in gone and typ == stage, word=32)
    out = go(rt, fm, 6, word=32)
    assert out.failure is None, out.failure
    assert all(x.dtype == np.uint32 for x in inputs.values())
    assert all(y.nbytes == 4 * (fm.flat.numel() + 3) for y in masked.values())
    expect_in = sorted(set(inputs) - gone) if stage == "secagg/masked" else sorted(inputs)
    total = np.zeros_like(inputs["c0"])
    for c in expect_in:
        total += inputs[c]
    want_sum, want_w = decode(total, len(expect_in), 1.0, bits_for(N, 32))
    assert torch.equal(out.weighted_sum, want_sum) and out.weight == want_w
    # 31 - ceil(log2 10) = 27 bits per value: a step of 2 / (2^27 - 1)
    assert bits_for(N, 32) == 27 and bits_for(100, 32) == 24 and bits_for(100) == 52
    x = inputs["c3"].astype(np.float64)
    assert abs(np.corrcoef(x, masked["c3"].astype(np.float64))[0, 1]) < 0.05


def test_a_64_bit_masked_input_in_a_32_bit_round_is_refused():
    """A client that masks in the wrong word (or pads its input) is dropped at the masked
    input, and the round goes on without it."""
    fm, rt, inputs, _ = setup(word=32)
    inner = rt.handler

    def lying(cid, msg):
        reply = inner(cid, msg)
        if cid == "c4" and reply.type == "secagg/masked_input":
            y = np.frombuffer(reply.blobs["y"][0], dtype=np.uint32).astype(np.uint64)
            return Message(reply.type, reply.config, {}, {"y": [y.tobytes()]})
        return reply

    rt.handler = lying
    out = go(rt, fm, 6, word=32)
    assert out.failure is None, out.failure
    assert "c4" not in out.survivors and len(out.survivors) == N - 1
    why = [d["reason"] for d in out.dropped if d["client"] == "c4"]
    assert why and "wrong length" in why[0]


def test_a_client_refuses_an_encoding_that_does_not_fit_its_word():
    """A server that asks for more bits per value than the word holds (so the sum would
    wrap) gets no masked input from that client."""
    with pytest.raises(ValueError, match="do not fit a 32-bit word"):
        encode(torch.zeros(3), 1.0, 1.0, 40, word=32)
    with pytest.raises(ValueError, match="16-bit word"):
        encode(torch.zeros(3), 1.0, 1.0, 8, word=16)


def test_a_32_bit_client_state_survives_a_save_and_restore():
    from fedgpt.federation.secure_sum_client import dump_round_state, load_round_state

    x = np.arange(7, dtype=np.uint32) * np.uint32(2**29)
    back = load_round_state(json.loads(json.dumps(dump_round_state(advertise(1, x)))))
    assert back.x.dtype == np.uint32 and np.array_equal(back.x, x)
    old = advertise(1, x.astype(np.uint64))
    assert load_round_state(dump_round_state(old)).x.dtype == np.uint64


def test_the_32_bit_word_is_refused_with_distributed_dp():
    with pytest.raises(ConfigError, match="secagg_word = 32"):
        load_config(
            None,
            [
                'privacy.mode="distributed_dp"',
                'privacy.secure_aggregation="secagg"',
                "privacy.noise_multiplier=1.0",
                "privacy.secagg_word=32",
            ],
        )


def test_below_threshold_fails_cleanly():
    gone = {f"c{i}" for i in range(6)}  # t = 5 of 9 neighbours; 4 left < t + 1
    fm, rt, _, _ = setup(drop=lambda cid, typ: cid in gone and typ == "secagg/masked")
    out = go(rt, fm)
    assert out.weighted_sum is None and "need" in out.failure


def test_masked_vector_is_uncorrelated_with_its_input():
    fm, rt, inputs, masked = setup()
    go(rt, fm)
    x = inputs["c3"].astype(np.float64)
    y = masked["c3"].astype(np.float64)
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.05
    assert not np.array_equal(x, y)


def test_tampered_share_is_rejected_and_the_round_goes_on():
    def tamper(cid, msg):
        if cid == "c5" and msg.type == "secagg/masked":
            blobs = dict(msg.blobs)
            key = sorted(blobs)[0]
            ct = bytearray(blobs[key][0])
            ct[20] ^= 1
            blobs[key] = [bytes(ct)]
            return Message(msg.type, msg.config, msg.tensors, blobs)
        return msg

    fm, rt, inputs, _ = setup(tamper=tamper)
    out = go(rt, fm)
    assert out.failure is None
    assert any("failed authentication" in d["reason"] for d in out.dropped)
    total = np.zeros_like(inputs["c0"])
    for c in inputs:
        total += inputs[c]
    assert torch.equal(out.weighted_sum, decode(total, N, 1.0, bits_for(N))[0])


def test_a_client_never_reveals_both_secrets_of_a_peer():
    st = advertise(1, np.zeros(3, dtype=np.uint64))
    with pytest.raises(ValueError, match="both"):
        unmask(st, "a", {"b"}, {"b"})


def test_shamir_threshold():
    secret = bytes(range(32))
    sh = shamir.split(secret, 3, [1, 2, 3, 4, 5])
    assert shamir.reconstruct({x: sh[x] for x in (2, 4, 5)}) == secret
    with pytest.raises(ValueError, match="too few"):  # 2 < t shares: a random field element
        shamir.reconstruct({x: sh[x] for x in (1, 3)})


def test_secagg_plus_graph_is_symmetric_and_sparse():
    ids = [f"c{i}" for i in range(20)]
    g = neighbours(ids, 4, np.random.default_rng(0))
    assert all(len(v) == 4 for v in g.values())
    assert all(u in g[v] for u in ids for v in g[u])


def test_quantisation_round_trip():
    d = torch.tensor([0.5, -0.25, 2.0])
    q = encode(d, 0.5, 1.0, 40)
    s, w = decode(q, 1, 1.0, 40)
    assert torch.allclose(s, torch.tensor([0.25, -0.125, 0.5]), atol=1e-9)
    assert w == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("word", [64, 32])
def test_secagg_run_matches_plaintext(tiny_overrides, tmp_path, word):
    base = [
        *tiny_overrides,
        "baselines.enabled=false",
        "federation.min_clients=4",
        "federation.rounds=1",
    ]  # (Adam amplifies float32 rounding in later rounds)
    run_experiment(load_config(None, base), tmp_path / "plain")
    sa = [*base, 'privacy.secure_aggregation="secagg"', f"privacy.secagg_word={word}"]
    run_experiment(load_config(None, sa), tmp_path / "sa")
    a = load_file(tmp_path / "plain/model/model.safetensors")
    b = load_file(tmp_path / "sa/model/model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    row = json.loads((tmp_path / "sa/metrics.jsonl").read_text().splitlines()[0])
    assert row["dropped"] == [] and len(row["participants"]) == 4
    numel = sum(t.numel() for t in a.values())  # tied weights are saved once
    masked = 4 * (word // 8) * numel  # the masked words of 4 clients
    assert masked < row["bytes_up"] < masked + 4 * 4 * 64 * 64 + 100_000  # + keys, shares
    with pytest.raises(ConfigError, match="at least 3 clients"):
        run_experiment(
            load_config(None, [*tiny_overrides, 'privacy.secure_aggregation="secagg"']),
            tmp_path / "two",
        )
