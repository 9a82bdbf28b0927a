"""Attacks on the privacy and integrity of a round, each written as the adversary would
run it: a server that deviates from the protocol, or a client that lies. Every test runs
the attack and shows that it fails (docs/threat-model.md lists what each one shows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import caesar_clients

from fedgpt.config import ClientConfig
from fedgpt.federation.client_app import ClientApp
from fedgpt.federation.secure_sum_client import SecAggClient
from fedgpt.messages import Message
from fedgpt.privacy.secagg import shamir
from fedgpt.privacy.secagg.identity import Identities, survivors_statement
from fedgpt.privacy.secagg.quantize import bits_for
from fedgpt.privacy.secagg.server import SecAggParams, _Round, run_round
from fedgpt.runtime import InProcessRuntime

N = 8  # the complete graph: 7 neighbours each


@pytest.fixture(scope="module")
def federation():
    fm, data = caesar_clients(N)
    return fm, data, fm.flat.clone()  # training moves fm: every round starts from w0


def clients(federation, lie=None, identities=None):
    """An InProcessRuntime over honest clients (holding ``identities``, if given);
    ``lie(cid, msg, reply)`` may replace a client's reply (a lying client)."""
    fm, data, _ = federation
    secure = [SecAggClient(0.5, identities)] if identities is not None else []
    ccfg = ClientConfig(local_steps=1, batch_size=2, seq_len=16)
    app = ClientApp.build(fm, data, ccfg, secure=secure)

    def tamper(cid, msg, reply):
        return [(cid, lie(cid, msg, reply) if lie is not None else reply)]

    return app, InProcessRuntime(app, tamper=tamper)


PARAMS = dict(value_range=1.0, bits=bits_for(N), weight_cap=1000, threshold_fraction=0.5,
              k=0, graph_seed=0)  # fmt: skip


def stages(federation, runtime, k=0, fraction=0.5, registry=None):
    """An honest server's first two stages (advertise, share): the round, keys, shares."""
    fm, _, w0 = federation
    p = SecAggParams(**{**PARAMS, "k": k, "threshold_fraction": fraction})
    r = _Round(runtime, None, 1, fm.flat.numel(), p, registry)
    ids = [f"c{i}" for i in range(N)]
    keys = r.advertise(ids, {c: i for i, c in enumerate(ids)}, w0)
    shares = r.share(keys)
    return r, keys, shares


def share_request(r: _Round, u: str, threshold, index, pk=None) -> Message:
    pk = pk if pk is not None else {v: r.pk[v] for v in r.graph[u]}
    sigs = {f"sig:{v}": [r.sig[v]] for v in pk if r.sig.get(v)}
    return Message(
        "secagg/share",
        {"round": 1, "threshold": threshold, "index": index},
        {},
        {**{f"pk:{v}": list(keys) for v, keys in pk.items()}, **sigs},
    )


# --- a server that deviates ---------------------------------------------------------


@pytest.mark.parametrize("threshold", [1, 2, 3, 8])
def test_server_chosen_threshold_is_refused(federation, threshold):
    """t = 1 makes every share the secret; t ≤ 7/2 lets two halves of the neighbours each
    rebuild one secret; t = 8 > 7 neighbours is no threshold. Each client refuses."""
    app, rt = clients(federation)
    r, keys, _ = stages(federation, rt)
    for u in sorted(keys):
        with pytest.raises(ValueError, match="threshold .* refused"):
            app(u, share_request(r, u, threshold, r.index))


@pytest.mark.parametrize("point", [0, shamir.PRIME, -1, "1", 1])
def test_server_chosen_evaluation_points_are_refused(federation, point):
    """x = 0 or x = p makes a share the secret itself; a repeated x (here: another client's)
    makes two shares one. Each client refuses before sending any share."""
    app, rt = clients(federation)
    r, keys, _ = stages(federation, rt)
    u, v = "c0", "c1"
    index = {**r.index, v: point if point != 1 else r.index["c2"]}
    with pytest.raises(ValueError, match="evaluation points refused"):
        app(u, share_request(r, u, r.t, index))


def test_split_unmask_requests_never_recover_both_secrets(federation):
    """The server tells half of u's neighbours "u survived" and the other half "u dropped",
    to collect both u's self-mask seed and its mask key. Each client reads survivors and
    dropped from the survivor set it signed, not from the request: all reveal u's
    self-mask share, none its mask key. (Without the check, t more than half of the
    neighbours would still stop two disjoint halves from both holding t shares.)"""
    app, rt = clients(federation)
    r, keys, shares = stages(federation, rt)
    masked = r.masked(shares)
    u3 = sorted(masked)
    u = "c0"
    peers = sorted(v for v in r.graph[u] if v in masked)
    revealed = {"b": 0, "s": 0}
    for i, v in enumerate(peers):
        app(v, Message("secagg/check", {"round": 1, "u3": u3}))
        survived = i < len(peers) // 2
        ask = {"round": 1, "survivors": [u] if survived else [],
               "dropped": [] if survived else [u], "u3": u3}  # fmt: skip
        reply = app(v, Message("secagg/unmask", ask))
        revealed["b"] += u in reply.config["b"]
        revealed["s"] += u in reply.config["s"]
    assert revealed == {"b": len(peers), "s": 0}
    assert r.t > len(peers) // 2  # t = 4 of 7


IDS = [f"c{i}" for i in range(N)]


def test_substituted_keys_are_refused(federation):
    """The server replaces c1's advertised keys by its own (to open the shares addressed
    to c1): the clients check each peer's keys against its registered identity and refuse
    the request, so no share leaves them."""
    from fedgpt.privacy.secagg import crypto

    ids = Identities.generate(IDS)
    app, rt = clients(federation, identities=ids)
    r, keys, _ = stages(federation, rt, registry=ids.public())
    _, c_pk = crypto.keypair()
    _, s_pk = crypto.keypair()
    forged = {**{v: r.pk[v] for v in r.graph["c0"]}, "c1": (c_pk, s_pk)}
    with pytest.raises(ValueError, match="c1's keys carry no valid signature"):
        app("c0", share_request(r, "c0", r.t, r.index, forged))


def test_a_client_of_the_servers_own_is_refused(federation):
    """The server adds "sybil", a client of its own with its own keys, as a neighbour:
    it is in no registry, so the request is refused."""
    from fedgpt.privacy.secagg import crypto

    ids = Identities.generate(IDS)
    app, rt = clients(federation, identities=ids)
    r, keys, _ = stages(federation, rt, registry=ids.public())
    pk = {v: r.pk[v] for v in r.graph["c0"]}
    pk["sybil"] = (crypto.keypair()[1], crypto.keypair()[1])
    index = {**r.index, "sybil": N + 1}
    with pytest.raises(ValueError, match="sybil's keys carry no valid signature"):
        app("c0", share_request(r, "c0", r.t + 1, index, pk))


def test_two_survivor_sets_do_not_unmask(federation):
    """Consistency check: the server tells c1..c4 that c0 survived and c5..c7 that it
    dropped. Each client signs only the set it was shown; an unmask request needs t = 4
    neighbours' signatures on one set. The larger camp has 4 signers but cannot get
    the self-mask seed AND the mask key: the other camp, shown the second set, refuses to
    unmask for lack of signatures, and a client asked with a set it did not sign refuses."""
    ids = Identities.generate(IDS)
    app, rt = clients(federation, identities=ids)
    r, keys, shares = stages(federation, rt, registry=ids.public())
    r.masked(shares)
    with_u = IDS  # c0 survived
    without = IDS[1:]  # c0 dropped
    camp_a, camp_b = IDS[1:5], IDS[5:]
    sigs_a, sigs_b = {}, {}
    for v in camp_a:
        reply = app(v, Message("secagg/check", {"round": 1, "u3": with_u}))
        sigs_a[v] = reply.blobs["sig"][0]
    for v in camp_b:
        reply = app(v, Message("secagg/check", {"round": 1, "u3": without}))
        sigs_b[v] = reply.blobs["sig"][0]
    assert all(ids.verify(v, s, survivors_statement(1, without)) for v, s in sigs_b.items())
    # camp B (3 signers; for c5, 2 neighbours < t = 4) cannot be made to reveal c0's mask key
    ask_b = {"round": 1, "survivors": [], "dropped": ["c0"], "u3": without}
    with pytest.raises(ValueError, match="2 of its neighbours signed the survivor set, need 4"):
        app("c5", Message("secagg/unmask", ask_b, {}, {f"sig:{v}": [s] for v, s in sigs_b.items()}))
    # nor with camp A's signatures on the other set: it signed "without", not "with_u"
    ask = {"round": 1, "survivors": ["c0"], "dropped": [], "u3": with_u}
    with pytest.raises(ValueError, match="not the survivor set this client signed"):
        app("c6", Message("secagg/unmask", ask, {}, {f"sig:{v}": [s] for v, s in sigs_a.items()}))
    # and a client refuses to sign a second set in the same round
    with pytest.raises(ValueError, match="signed another set"):
        app("c1", Message("secagg/check", {"round": 1, "u3": without}))


def test_an_unsigned_advertisement_drops_only_its_sender(federation):
    """c4 advertises keys with a signature that is not its identity's (a lying client, or
    one without its key): the server checks the registry and drops c4 alone."""
    ids = Identities.generate(IDS)

    def lie(cid, msg, reply):
        if cid == "c4" and reply.type == "secagg/keys":
            return Message(reply.type, reply.config, {}, {**reply.blobs, "sig": [b"\x01" * 64]})
        return reply

    _, _, w0 = federation
    _, rt = clients(federation, lie, identities=ids)
    out = run_round(rt, IDS, 1, {c: i for i, c in enumerate(IDS)}, w0, w0.numel(),
                    registry=ids.public(), **PARAMS)  # fmt: skip
    assert out.failure is None, out.failure
    assert [d["client"] for d in out.dropped] == ["c4"]
    assert "not signed by the client's registered identity" in out.dropped[0]["reason"]
    assert out.survivors == [c for c in IDS if c != "c4"]


def test_a_signed_round_sums_exactly(federation):
    """With identities on both sides, the round (signed keys, consistency check) gives the
    same sum as without."""
    ids = Identities.generate(IDS)
    _, _, w0 = federation
    _, rt = clients(federation, identities=ids)
    signed = run_round(rt, IDS, 1, {c: i for i, c in enumerate(IDS)}, w0, w0.numel(),
                       registry=ids.public(), **PARAMS)  # fmt: skip
    plain = lying_round(federation)
    assert signed.failure is None and plain.failure is None
    assert torch.equal(signed.weighted_sum, plain.weighted_sum)


# --- clients that lie ---------------------------------------------------------------


def lying_round(federation, lie=None):
    """One SecAgg round of an honest server; ``lie`` as in :func:`clients`."""
    _, _, w0 = federation
    _, rt = clients(federation, lie)
    ids = [f"c{i}" for i in range(N)]
    return run_round(rt, ids, 1, {c: i for i, c in enumerate(ids)}, w0, w0.numel(), **PARAMS)


def test_a_false_share_is_found_and_its_sender_named(federation):
    """c3 reveals a share of another client's self mask that is off by one. The secret is
    rebuilt from the consistent shares, the sum is exact, and c3 is named."""
    ref = lying_round(federation)

    def lie(cid, msg, reply):
        if cid == "c3" and reply.type == "secagg/shares_out":
            b = dict(reply.config["b"])
            u = sorted(b)[0]
            x, y = b[u]
            b[u] = [x, hex(int(y, 16) + 1)]
            return Message(reply.type, {**reply.config, "b": b})
        return reply

    out = lying_round(federation, lie)
    assert out.failure is None, out.failure
    assert torch.equal(out.weighted_sum, ref.weighted_sum) and out.weight == ref.weight
    named = [d for d in out.dropped if "false share" in d["reason"]]
    assert [d["client"] for d in named] == ["c3"]


@pytest.mark.parametrize("word", [-1, 0])  # the weight, then the first value
def test_a_masked_input_that_is_no_encoding_fails_the_round(federation, word):
    """c5 flips the top bit of one word of its masked input. Unmasked, the sum is outside
    what any set of honest encodings gives: the round fails and nothing is applied."""

    def lie(cid, msg, reply):
        if cid == "c5" and reply.type == "secagg/masked_input":
            y = np.frombuffer(reply.blobs["y"][0], dtype=np.uint64).copy()
            y[word] ^= np.uint64(1 << 63)
            return Message(reply.type, reply.config, {}, {"y": [y.tobytes()]})
        return reply

    out = lying_round(federation, lie)
    assert out.weighted_sum is None and "outside the range" in out.failure


def test_an_unusable_public_key_drops_only_its_sender(federation):
    """c2 advertises a 5-byte key, c6 a low-order X25519 point (every exchange with it gives
    the all-zero secret). Both are dropped and named; the honest clients' round goes on."""

    def lie(cid, msg, reply):
        if reply.type == "secagg/keys" and cid in ("c2", "c6"):
            key = b"\x00" * 5 if cid == "c2" else b"\x00" * 32
            return Message(reply.type, reply.config, {}, {**reply.blobs, "s_pk": [key]})
        return reply

    out = lying_round(federation, lie)
    assert out.failure is None, out.failure
    assert sorted(d["client"] for d in out.dropped) == ["c2", "c6"]
    assert all("unusable public key" in d["reason"] for d in out.dropped)
    assert out.survivors == [f"c{i}" for i in range(N) if i not in (2, 6)]


# --- clients that lie about their update (the server sees individual updates) --------


def plain_server(federation, lie, *overrides):
    """A FedAvg server over the 8 clients, all taking part; ``lie`` as in :func:`clients`."""
    from fedgpt.build import server_for
    from fedgpt.config import load_config

    fm, _, w0 = federation
    cfg = load_config(None, ["model.n_layer=2", "model.n_embd=32", "model.n_head=2",
                             "model.context=64", "client.local_steps=1", "client.batch_size=2",
                             "client.seq_len=16", "federation.fraction=1.0",
                             "federation.min_clients=8", *overrides])  # fmt: skip
    _, rt = clients(federation, lie)
    return server_for(cfg, rt, [f"c{i}" for i in range(N)], fm), w0


def lie_in_train(who: str, change):
    def lie(cid, msg, reply):
        if cid == who and reply.type == "train/result":
            return change(reply)
        return reply

    return lie


def test_a_huge_example_count_is_capped(federation):
    """c1 claims 10^12 examples to outweigh everyone (FedAvg weight 1.000000 before). Its
    n_k is capped at federation.max_examples before it weights anything: the new model is
    the FedAvg of the updates with min(n_k, cap) weights."""
    sent = {}

    def lie(cid, msg, reply):
        if reply.type != "train/result":
            return reply
        n = 10**12 if cid == "c1" else reply.config["num_examples"]
        sent[cid] = (reply.tensors["delta"], n)
        return Message(reply.type, {**reply.config, "num_examples": n}, reply.tensors)

    server, w0 = plain_server(federation, lie, "federation.max_examples=500")
    state, result = server.run_round(server.init_state(w0))
    assert sorted(result.participants) == sorted(sent)
    w = torch.tensor([min(n, 500) for _, n in sent.values()], dtype=torch.float64)
    deltas = torch.stack([d for d, _ in sent.values()]).double()
    expect = (w[:, None] * deltas).sum(0) / w.sum()
    assert torch.allclose((state.weights - w0).double(), expect, atol=1e-6)
    assert float(w[list(sent).index("c1")] / w.sum()) < 0.2  # 1.000000 uncapped


@pytest.mark.parametrize("scale", [1e30, 1e4])
def test_a_huge_update_is_refused(federation, scale):
    """c4 sends its update times 10^30 (the model became NaN before) or times 10^4 (within
    the absolute bound, but far outside the round's norms): refused, the round goes on."""

    def blow_up(reply):
        return Message(reply.type, reply.config, {"delta": reply.tensors["delta"] * scale})

    server, w0 = plain_server(federation, lie_in_train("c4", blow_up))
    state, result = server.run_round(server.init_state(w0))
    assert "c4" not in result.participants and len(result.participants) == N - 1
    (why,) = [d["reason"] for d in result.dropped if d["client"] == "c4"]
    assert ("max_update_norm" in why) if scale > 1e5 else ("median" in why)
    assert bool(torch.isfinite(state.weights).all())


def test_non_finite_new_weights_stop_the_run(federation):
    """With both norm checks switched off, two clients send values near float32's maximum:
    the server's step (server_lr 100) overflows. The weights are not applied and the run
    stops with the reason."""
    from fedgpt.errors import RunFailed

    def huge(reply):
        return Message(
            reply.type, reply.config, {"delta": torch.full_like(reply.tensors["delta"], 3e38)}
        )

    def lie(cid, msg, reply):
        return huge(reply) if cid in ("c0", "c1") and reply.type == "train/result" else reply

    server, w0 = plain_server(federation, lie, "federation.max_update_norm=0",
                              "federation.norm_outlier_factor=0",
                              "federation.server_lr=100")  # fmt: skip
    with pytest.raises(RunFailed, match="not finite"):
        server.run_round(server.init_state(w0))


def test_identities_from_the_keys_command_run_a_federation(tiny_overrides, tmp_path):
    """`fedgpt keys secagg` writes the registry and one key per client (0600); a run that
    names the folder signs every round and matches the run with fresh identities; a folder
    without a client's key, or twice written, is a one-line error (exit 2)."""
    import json
    import stat

    from typer.testing import CliRunner

    from fedgpt.cli.main import app
    from fedgpt.config import load_config
    from fedgpt.experiment import run_experiment

    base = [*tiny_overrides, 'privacy.secure_aggregation="secagg"', "federation.min_clients=3",
            "baselines.enabled=false", "federation.rounds=1"]  # fmt: skip
    runner = CliRunner()
    sets = [x for o in base for x in ("--set", o)]
    res = runner.invoke(app, ["keys", "secagg", str(tmp_path / "ids"), *sets])
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "ids/keys/index.json").read_text())
    registry = json.loads((tmp_path / "ids/registry.json").read_text())
    assert set(index) == set(registry) and len(index) >= 3
    key = tmp_path / "ids/keys" / next(iter(index.values()))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = runner.invoke(app, ["keys", "secagg", str(tmp_path / "ids"), *sets])
    assert again.exit_code == 2 and "not overwritten" in again.stderr

    named = [*base, f'privacy.secagg_identities="{tmp_path / "ids"}"']
    run_experiment(load_config(None, named), tmp_path / "named")
    run_experiment(load_config(None, base), tmp_path / "fresh")
    a, b = (json.loads((tmp_path / r / "metrics.jsonl").read_text()) for r in ("named", "fresh"))
    assert a["participants"] == b["participants"] and a["dropped"] == b["dropped"] == []
    assert a["train_loss"] == b["train_loss"]

    key.unlink()
    res = runner.invoke(app, ["run", *[x for o in named for x in ("--set", o)]])
    assert res.exit_code == 2 and "secagg_identities" in res.stderr


def test_secagg_sends_no_per_client_metadata_in_the_clear(federation):
    """Under SecAgg the server got n_k, the training loss and the update norm of every
    client beside the masked vector. Now every reply it receives carries n = 1 and no
    metric; the weighted mean loss comes out of the masked sum, equal to the clients' own."""
    _, _, w0 = federation
    true, seen = {}, []
    fm, data, _ = federation
    app = ClientApp.build(fm, data, ClientConfig(local_steps=1, batch_size=2, seq_len=16))
    inner = app.train

    def train(cid, msg):  # what each client computed, before any of it leaves
        reply = inner(cid, msg)
        true[cid] = (reply.config["num_examples"], reply.config["metrics"]["train_loss"])
        return reply

    app.train = train

    def handler(cid, msg):
        reply = app(cid, msg)
        seen.append(reply)
        return reply

    out = run_round(InProcessRuntime(handler), IDS, 1, {c: i for i, c in enumerate(IDS)}, w0,
                    w0.numel(), **PARAMS)  # fmt: skip
    assert out.failure is None, out.failure
    keys = [r for r in seen if r.type == "secagg/keys"]
    assert len(keys) == N
    assert all(r.config["num_examples"] == 1 and r.config["metrics"] == {} for r in keys)
    assert not any("loss" in str(r.config) or "norm" in str(r.config) for r in seen)
    w = {c: min(n, PARAMS["weight_cap"]) / PARAMS["weight_cap"] for c, (n, _) in true.items()}
    expect = sum(w[c] * loss for c, (_, loss) in true.items()) / sum(w.values())
    assert abs(out.train_loss - expect) < 1e-6


# --- differential privacy that holds against the server -----------------------------


def test_dp_sgd_sampling_is_not_the_servers_to_know(federation):
    """The server sends the round's seed; DP-SGD's Poisson samples were drawn from it, so
    the server knew which records each step used. Now two trainings from the same seed
    and weights use different samples (the OS CSPRNG), unless reproducible_noise is set;
    and the reply carries n = 1 and no loss (each changes with one record)."""
    from fedgpt.config import PrivacyConfig

    fm, data, w0 = federation
    ccfg = ClientConfig(local_steps=3, batch_size=2, seq_len=16)
    msg = Message("train", {"round": 1, "seed": 5}, {"weights": w0})

    def twice(reproducible: bool):
        p = PrivacyConfig(mode="dp_sgd", noise_multiplier=1e-9, clip_norm=1.0,
                          reproducible_noise=reproducible)  # fmt: skip
        app = ClientApp.build(fm, data, ccfg, p)
        return [app("c3", msg) for _ in range(2)]

    a, b = twice(False)
    assert (a.tensors["delta"] - b.tensors["delta"]).abs().max() > 1e-4  # other records
    assert a.config["num_examples"] == 1 and set(a.config["metrics"]) == {
        "steps", "seconds", "epsilon"}  # fmt: skip
    c, d = twice(True)
    assert torch.equal(c.tensors["delta"], d.tensors["delta"])


def test_ckks_sends_no_per_client_metadata_in_the_clear(federation):
    """Under CKKS the server got each client's n_k, loss and update norm beside its
    ciphertext. Now n_k and the loss ride inside the ciphertext: every reply says n = 1
    with no metric, and the round's mean loss and update match the plaintext round's."""
    pytest.importorskip("tenseal")
    from fedgpt.build import server_for
    from fedgpt.config import load_config
    from fedgpt.federation.secure_sum_client import CkksEncryption
    from fedgpt.privacy.ckks import make_keys

    fm, data, w0 = federation
    secret, public = make_keys()
    over = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.context=64",
            "client.local_steps=1", "client.batch_size=2", "client.seq_len=16",
            "federation.fraction=1.0", "federation.min_clients=8"]  # fmt: skip
    seen = []

    def run(secure: str):
        cfg = load_config(None, [*over, f'privacy.secure_aggregation="{secure}"'])
        sides = [CkksEncryption(secret, expected=N)] if secure == "ckks" else []
        app = ClientApp.build(fm, data, ClientConfig(local_steps=1, batch_size=2, seq_len=16),
                              secure=sides)  # fmt: skip

        def tamper(cid, msg, reply):
            seen.append((secure, reply))
            return [(cid, reply)]

        server = server_for(cfg, InProcessRuntime(app, tamper=tamper), IDS, fm,
                            ckks_public=public if secure == "ckks" else None)  # fmt: skip
        return server.run_round(server.init_state(w0))

    (ck_state, ck), (pl_state, pl) = run("ckks"), run("none")
    replies = [r for s, r in seen if s == "ckks" and r.type == "train/result"]
    assert len(replies) == N
    assert all(r.config["num_examples"] == 1 and r.config["metrics"] == {} for r in replies)
    assert ck.train_loss == pytest.approx(pl.train_loss, rel=1e-5)
    assert torch.allclose(ck_state.weights, pl_state.weights, atol=1e-5)


def test_central_dp_cohorts_are_not_a_function_of_the_configuration(tiny_overrides, tmp_path):
    """Central DP's ε counts on amplification by sampling, but the cohort was a function of
    the seed in config.toml: any reader of the run folder knew who took part. Now the
    server samples with a key from the OS: two runs of one configuration sample different
    cohorts, and a resumed run takes the key back from its checkpoint (cohorts are a
    function of key and round, so it samples as the uninterrupted run would)."""
    import json

    from fedgpt.config import load_config
    from fedgpt.experiment import run_experiment
    from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint

    over = [*tiny_overrides, 'privacy.mode="central_dp"', "privacy.noise_multiplier=0.5",
            "privacy.clip_norm=1.0", "federation.rounds=6", "federation.min_clients=2",
            "baselines.enabled=false", "federation.eval_every=100"]  # fmt: skip

    def cohorts(run: str) -> list[list[str]]:  # the server operator's private openings
        rows = (tmp_path / run / "private" / "cohorts.jsonl").read_text().splitlines()
        return [json.loads(x)["participants"] for x in rows]

    for run in ("a", "b"):
        run_experiment(load_config(None, over), tmp_path / run)
    assert cohorts("a") != cohorts("b")  # 6 rounds of 2 among the clients: ~never equal
    state = load_checkpoint(latest_checkpoint(tmp_path / "a" / "checkpoints")).server_state
    assert state["sampling.key"].dtype == torch.uint8 and state["sampling.key"].numel() == 32
    # resumed: the key comes back from the checkpoint, so the cohorts go on as they would
    short = [x for x in over if not x.startswith("federation.rounds")]
    run_experiment(load_config(None, [*short, "federation.rounds=3"]), tmp_path / "e")
    key3 = load_checkpoint(latest_checkpoint(tmp_path / "e" / "checkpoints")).server_state
    run_experiment(load_config(None, over), tmp_path / "e", resume=True)
    key6 = load_checkpoint(latest_checkpoint(tmp_path / "e" / "checkpoints")).server_state
    assert torch.equal(key3["sampling.key"], key6["sampling.key"]) and len(cohorts("e")) >= 6
    seeded = [*over, "privacy.reproducible_noise=true"]
    for run in ("c", "d"):
        run_experiment(load_config(None, seeded), tmp_path / run)
    assert cohorts("c") == cohorts("d")  # tests and exact reruns keep the seeded sampling


@pytest.mark.parametrize("mode", ["central_dp", "distributed_dp"])
def test_a_reader_of_the_run_folder_does_not_learn_the_cohorts(mode, tiny_overrides, tmp_path):
    """Central DP's ε (and distributed DP's) counts on nobody knowing who took part; the
    cohorts were listed in metrics.jsonl and the ledger. Now every artefact a model user
    receives carries counts and a salted commitment only; the openings stay in private/,
    ``fedgpt verify`` checks them, and a changed opening is caught."""
    import json

    from fedgpt.build import load_clients
    from fedgpt.config import load_config
    from fedgpt.experiment import run_experiment
    from fedgpt.federation.verify import verify_run

    over = [*tiny_overrides, f'privacy.mode="{mode}"', "privacy.noise_multiplier=0.5",
            "federation.rounds=2", "federation.min_clients=4", "baselines.enabled=false",
            "runtime.fail_fraction=0.3", "federation.fraction=0.5",
            "privacy.reproducible_noise=true"]  # fmt: skip
    if mode == "distributed_dp":
        over.append('privacy.secure_aggregation="secagg"')
    cfg = load_config(None, over)
    run_experiment(cfg, tmp_path / "r")
    run = tmp_path / "r"
    ids = [c.client_id for c in load_clients(cfg)]
    # what a model user receives: all but the server's own private/ and checkpoints/ (the
    # checkpoints hold the sampling key, which gives the cohorts back by design)
    public = [p for p in run.rglob("*")
              if p.is_file() and not {"private", "checkpoints"} & set(p.parts)]  # fmt: skip
    for p in public:
        if p.suffix in (".jsonl", ".json", ".html", ".md", ".toml", ".txt"):
            text = p.read_text(errors="replace")  # naming every client says nothing
            named = {c for c in ids if c in text}
            assert named in (set(), set(ids)), f"{p.name} names {sorted(named)[:3]}"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    opened = [json.loads(x) for x in (run / "private/cohorts.jsonl").read_text().splitlines()]
    assert [r["participants"] for r in rows] == [len(o["participants"]) for o in opened]
    assert any(d["client"] == "(hidden)" for r in rows for d in r["dropped"])
    assert any(d["client"] in ids for o in opened for d in o["dropped"])
    assert verify_run(run).ok
    o = opened[0]
    o["participants"] = sorted(o["participants"])[1:] + ["lear/LEAR"]  # claim another cohort
    (run / "private/cohorts.jsonl").write_text("\n".join(json.dumps(x) for x in opened) + "\n")
    assert verify_run(run).problems == [
        "round 1: the cohort does not open to private/cohorts.jsonl"
    ]


@pytest.fixture(scope="module")
def ckks_round(federation):
    """Eight CKKS key holders with identities, each having trained and encrypted round 1:
    (app, identities, {client: train reply}, public context)."""
    pytest.importorskip("tenseal")
    from fedgpt.federation.secure_sum_client import CkksEncryption
    from fedgpt.privacy.ckks import make_keys

    fm, data, w0 = federation
    secret, public = make_keys()
    ids = Identities.generate(IDS)
    app = ClientApp.build(fm, data, ClientConfig(local_steps=1, batch_size=2, seq_len=16),
                          secure=[CkksEncryption(secret, ids, 0.5, N)])  # fmt: skip
    cfg = {"round": 1, "secure_aggregation": "ckks"}
    replies = {c: app(c, Message("train", {**cfg, "seed": i}, {"weights": w0}))
               for i, c in enumerate(IDS)}  # fmt: skip
    return app, ids, replies, public


def decrypt_request(replies, members, set_sigs, cts=None) -> Message:
    blobs = {f"sig:{v}": [s] for v, s in set_sigs.items()}
    for v in members:
        blobs[f"ct:{v}"] = list((cts or {}).get(v, replies[v].blobs["delta_ckks"]))
        blobs[f"ctsig:{v}"] = replies[v].blobs["ckks_sig"]
    return Message("ckks/decrypt", {"round": 1, "numel": 10, "members": members}, {}, blobs)


def test_ckks_decryption_oracle_is_closed(ckks_round):
    """The server sent one client's ciphertext as "the aggregate" and a key holder
    decrypted it. Now a key holder decrypts only a sum it adds up itself, of ciphertexts
    signed by the members of a set that a majority of the cohort signed: asked for one
    client's ciphertext (a set of 1), for a set it did not sign, or with encryptions of
    zero in place of the other members', it refuses."""
    import tenseal as ts

    app, ids, replies, public = ckks_round
    a = "c0"
    with pytest.raises(ValueError, match="a set of 1 is not one this client signs"):
        app("c1", Message("ckks/check", {"round": 1, "members": [a]}))
    # nor a set larger than the cohort (room for two disjoint "majorities")
    with pytest.raises(ValueError, match="a set of 9 is not one this client signs"):
        app("c1", Message("ckks/check", {"round": 1, "members": [*IDS, "c8"]}))
    with pytest.raises(ValueError, match="not the set this client signed"):
        app("c1", decrypt_request(replies, [a], {}))
    # all eight sign the full set; the server substitutes encryptions of zero for c1..c7
    sigs = {v: app(v, Message("ckks/check", {"round": 1, "members": IDS})).blobs["sig"][0]
            for v in IDS}  # fmt: skip
    ctx = ts.context_from(public)
    n_chunks = len(replies[a].blobs["delta_ckks"])
    zero = [ts.ckks_vector(ctx, [0.0] * 4096).serialize() for _ in range(n_chunks)]
    fake = {v: zero for v in IDS if v != a}
    with pytest.raises(ValueError, match="ciphertexts of c1 are not signed"):
        app("c2", decrypt_request(replies, IDS, sigs, fake))
    out = app("c2", decrypt_request(replies, IDS, sigs))  # the honest request is served
    assert out.type == "ckks/aggregate"
    with pytest.raises(ValueError, match="already decrypted this round"):
        app("c2", decrypt_request(replies, IDS, sigs))


def test_ckks_two_sets_cannot_both_be_decrypted(federation, ckks_round):
    """The difference attack: half of the cohort is asked to sign the set with c0, the other
    half the set without it, to decrypt both sums and subtract. A set needs 5 of the 8
    members' signatures; each camp has 4, so neither sum is decrypted (round 2)."""
    app, ids, replies, _ = ckks_round
    cfg, w0 = {"round": 2, "secure_aggregation": "ckks"}, federation[2]
    rnd2 = {c: app(c, Message("train", {**cfg, "seed": i}, {"weights": w0}))
            for i, c in enumerate(IDS)}  # fmt: skip
    with_a, without = IDS, IDS[1:]
    camp_a, camp_b = IDS[:4], IDS[4:]
    sig_a = {v: app(v, Message("ckks/check", {"round": 2, "members": with_a})).blobs["sig"][0]
             for v in camp_a}  # fmt: skip
    sig_b = {v: app(v, Message("ckks/check", {"round": 2, "members": without})).blobs["sig"][0]
             for v in camp_b}  # fmt: skip
    with pytest.raises(ValueError, match="signed another set this round"):
        app("c1", Message("ckks/check", {"round": 2, "members": without}))

    def request(members, sigs):
        m = decrypt_request(rnd2, members, sigs)
        return Message("ckks/decrypt", {**m.config, "round": 2}, {}, m.blobs)

    with pytest.raises(ValueError, match="4 members signed the set, need 5"):
        app("c1", request(with_a, sig_a))
    with pytest.raises(ValueError, match="4 members signed the set, need 5"):
        app("c5", request(without, sig_b))


def test_every_test_the_threat_model_names_exists():
    """docs/threat-model.md names a test for every claim; each must exist."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "threat-model.md").read_text()
    named = set(re.findall(r"`(?:[\w/]+\.py::)?(test_\w+)", text))
    sources = "\n".join(p.read_text() for p in (root / "tests").rglob("test_*.py"))
    defined = set(re.findall(r"^def (test_\w+)", sources, re.M))
    assert len(named) > 20 and named <= defined, sorted(named - defined)
