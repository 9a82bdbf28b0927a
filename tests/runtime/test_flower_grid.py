"""The Flower ServerApp and ClientApp wired through an in-memory Grid (no processes, no
sockets): every message is serialised to Flower's wire objects and back, every node has
its own ``context.state``, and the result must equal the in-process runtime's."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402
from conftest import kill_in_round, with_identities  # noqa: E402
from flower_harness import FLOWER_TINY  # noqa: E402
from flwr.app import Context, RecordDict  # noqa: E402
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects  # noqa: E402
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedgpt.config import load_config  # noqa: E402
from fedgpt.errors import ConfigError  # noqa: E402
from fedgpt.experiment import prepare, run_experiment  # noqa: E402
from fedgpt.federation.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402
from fedgpt.federation.verify import verify_run  # noqa: E402
from fedgpt.runtime.flower import (  # noqa: E402
    agent,
    client_app,
    server_app,  # noqa: E402
)
from fedgpt.runtime.flower import node as node_app
from fedgpt.runtime.flower.settings import FlowerSettings  # noqa: E402

SERVER = 1


def wire(obj):
    """Serialise a Flower object as the SuperLink stores it and inflate it again."""
    contents = {oid: o.deflate() for oid, o in get_all_nested_objects(obj).items()}
    return inflate_object_from_contents(obj.object_id, contents)


class MemoryGrid:
    """A Grid whose nodes run the FedGPT Flower ClientApp in this process.

    ``down``: node ids that never answer; ``broken``: node ids whose ClientApp raises.
    """

    def __init__(self, node_configs: dict[int, dict], down=(), broken=(), handler=None):
        self.handler = handler or node_app.handle  # what a node runs: Flower's ClientApp
        self.contexts = {
            n: Context(run_id=7, node_id=n, node_config=c, state=RecordDict(), run_config={})
            for n, c in node_configs.items()
        }
        self.down, self.broken = set(down), set(broken)
        self.inbox: dict[str, object] = {}
        self.count = 0
        self.pushes = 0  # exchanges: each push is answered before the server goes on

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        self.pushes += 1
        ids = []
        for msg in messages:
            self.count += 1
            mid = f"m{self.count}"
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            node = msg.metadata.dst_node_id
            if node in self.down:
                continue
            if node in self.broken:
                from flwr.app import Error, Message

                self.inbox[mid] = Message(Error(code=0, reason="ClientApp crashed"), reply_to=msg)
                continue
            delivered = wire(msg)
            delivered.metadata.__dict__["_message_id"] = mid
            reply = self.handler(delivered, self.contexts[node])
            self.inbox[mid] = wire(reply)
        return ids

    def pull_messages(self, message_ids):
        return [self.inbox.pop(m) for m in list(message_ids) if m in self.inbox]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower messages are stamped with the run and node of the current task."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", SERVER)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    node_app._CACHE.clear()
    yield
    node_app._CACHE.clear()


def split_nodes(overrides: list[str], n: int = 3) -> dict[int, dict]:
    ids = [c.client_id for c in prepare(load_config(None, overrides)).clients]
    return {100 + i: {"client-id": ",".join(ids[i::n])} for i in range(n)}


def final_weights(run_dir) -> torch.Tensor:
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints")).weights


def in_process(overrides: list[str], tmp_path) -> torch.Tensor:
    cfg = load_config(None, [*overrides, f'out_dir="{tmp_path / "ref"}"', 'name="ref"'])
    run_experiment(cfg, tmp_path / "ref" / "ref")
    return final_weights(tmp_path / "ref" / "ref")


def over_flower(overrides: list[str], tmp_path, grid: MemoryGrid) -> dict:
    extra = [f'out_dir="{tmp_path / "fl"}"', 'name="fl"']
    settings = FlowerSettings(overrides=tuple(overrides + extra), min_nodes=1, node_wait=0)
    return server_app.run(grid, settings)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ['federation.broadcast_dtype="bfloat16"'],
        [
            'privacy.secure_aggregation="secagg"',
            "federation.min_clients=3",
            "client.keep_optimizer_state=true",
        ],
        [
            'privacy.secure_aggregation="secagg"',
            "privacy.secagg_word=32",
            "federation.min_clients=3",
        ],
        [
            'privacy.mode="local_dp"',
            "privacy.noise_multiplier=0.5",
            "privacy.clip_norm=1.0",
            "privacy.reproducible_noise=true",
        ],
        [
            "attack.fraction=0.5",
            'attack.kind="sign_flip"',
            'federation.aggregator="median"',
            "federation.min_clients=4",
        ],
        ["devices.mix={full = 0.5, embeddings = 0.5}"],
        [
            'data.public_plays=["macbeth"]',
            'federation.aggregator="attention"',
            'federation.distill="feddf"',
            "federation.distill_windows=4",
        ],
        [
            'data.public_plays=["macbeth"]',
            'federation.distill="fedmd"',
            "federation.distill_windows=4",
            "federation.fedmd_client_layers=1",
        ],
        [
            "runtime.fail_fraction=0.4",
            'runtime.straggle_clients=["lear/KENT"]',
            "runtime.round_timeout=30",
            "federation.min_clients=4",
        ],
    ],
    ids=[
        "fedavg",
        "bf16-down",
        "secagg",
        "secagg32",
        "local_dp",
        "attack",
        "tiers",
        "attention-feddf",
        "fedmd",
        "faults",
    ],
)
def test_memory_grid_matches_in_process(extra, tmp_path):
    overrides = with_identities([*FLOWER_TINY, *extra], tmp_path / "identities")
    ref = in_process(overrides, tmp_path)
    grid = MemoryGrid(split_nodes(overrides))
    summary = over_flower(overrides, tmp_path, grid)
    got = final_weights(tmp_path / "fl" / "fl")
    assert summary["rounds"] == 2 and summary["runtime"]["kind"] == "flower"
    assert (got - ref).abs().max().item() <= 1e-6
    assert (tmp_path / "fl" / "fl" / "model" / "config.json").is_file()
    verdict = verify_run(tmp_path / "fl" / "fl")  # the signed ledger, as in-process
    assert verdict.ok and verdict.rounds == 2, verdict.problems
    ledger = (tmp_path / "fl" / "fl" / "ledger.jsonl").read_text().splitlines()
    reference = (tmp_path / "ref" / "ref" / "ledger.jsonl").read_text().splitlines()
    for ours, theirs in zip(ledger[1:3], reference[1:3], strict=True):
        a, b = json.loads(ours), json.loads(theirs)
        assert a["global_weights"] == b["global_weights"]
        assert a["participants"] == b["participants"]
        if "secagg" not in str(extra):  # the same update payloads arrived, hash for hash
            assert a["updates"] == b["updates"]


def test_dead_and_crashing_nodes_become_dropouts(tmp_path, monkeypatch):
    nodes = split_nodes(FLOWER_TINY)
    dead, crashing = list(nodes)[:2]
    grid = MemoryGrid(nodes)
    over = [*FLOWER_TINY, "federation.min_clients=6"]  # every client, every round
    settings = FlowerSettings(
        overrides=(*over, f'out_dir="{tmp_path}"', 'name="x"'), node_wait=0, timeout=0.5
    )
    # the handshake sees every node; afterwards one goes silent and one crashes
    orig = server_app.handshake

    def handshake_then_fail(*a, **k):
        out = orig(*a, **k)
        grid.down.add(dead)
        grid.broken.add(crashing)
        return out

    monkeypatch.setattr(server_app, "handshake", handshake_then_fail)
    server_app.run(grid, settings)

    rows = [json.loads(x) for x in (tmp_path / "x" / "metrics.jsonl").read_text().splitlines()]
    reasons = {d["client"]: d["reason"] for d in rows[0]["dropped"]}
    for cid in nodes[dead]["client-id"].split(","):
        assert reasons[cid].startswith(f"no reply from node {dead} within")
    for cid in nodes[crashing]["client-id"].split(","):
        assert "ClientApp crashed" in reasons[cid]
    assert len(rows[0]["participants"]) == 2


def test_node_with_another_model_is_refused(tmp_path, monkeypatch):
    grid = MemoryGrid(split_nodes(FLOWER_TINY))
    real = node_app.model_fingerprint
    calls = {"n": 0}

    def fingerprint(bundle, fm):  # the first node prepared (the server) is honest
        calls["n"] += 1
        return real(bundle, fm) if calls["n"] == 1 else "another vocabulary"

    monkeypatch.setattr(node_app, "model_fingerprint", fingerprint)
    with pytest.raises(ConfigError, match="model differs from the server's"):
        over_flower(FLOWER_TINY, tmp_path, grid)


def test_a_second_node_claiming_a_client_is_refused_and_the_run_goes_on(tmp_path, capsys):
    """Node b claims node a's clients (e.g. a node that connected with a stolen id list):
    the clients stay with a, b serves none of them, and the run completes."""
    nodes = split_nodes(FLOWER_TINY)
    a, b = list(nodes)[:2]
    nodes[b] = {"client-id": nodes[a]["client-id"]}
    summary = over_flower(FLOWER_TINY, tmp_path, MemoryGrid(nodes))
    assert summary["rounds"] == 2
    taken = nodes[a]["client-id"].split(",")
    log = capsys.readouterr()
    assert all(f"node {b} refused client {cid}: node {a} claimed it first" in log.out + log.err
               for cid in taken)  # fmt: skip


def test_unsupported_settings_are_refused_in_one_line(tmp_path):
    nodes = split_nodes(FLOWER_TINY)
    over = [*FLOWER_TINY, 'privacy.secure_aggregation="ckks"']
    with pytest.raises(ConfigError, match="ckks_keys"):
        over_flower(over, tmp_path, MemoryGrid(nodes))


def user_data(root, groups: list[list[str]], text: str):
    """One FedGPT user-data folder per node: ``root/node{i}/{client}/train.jsonl``."""
    lines = [x for x in text.splitlines() if x.strip()]
    for i, group in enumerate(groups):
        for j, cid in enumerate(group):
            d = root / f"node{i}" / cid
            d.mkdir(parents=True)
            part = lines[(i * 7 + j * 3) % 50 :][: 40 + 10 * j]
            d.joinpath("train.jsonl").write_text(
                "".join(json.dumps({"text": x}) + "\n" for x in part)
            )
    return [root / f"node{i}" for i in range(len(groups))]


def test_nodes_with_their_own_data_and_a_shared_checkpoint(tmp_path, tiny_checkpoint):
    """``data-path`` nodes (no Shakespeare, no text on the server) equal the in-process
    run over all their folders with the same ``model.path``."""
    from fedgpt.data import shakespeare_clients

    text = shakespeare_clients(min_chars=4000, plays=["lear"])[0].train
    groups = [["alice", "bob"], ["carol"], ["dave", "erin"]]
    folders = user_data(tmp_path / "nodes", groups, text)
    everyone = tmp_path / "all"
    for f in folders:
        for sub in f.iterdir():
            (everyone / sub.name).mkdir(parents=True)
            (everyone / sub.name / "train.jsonl").write_bytes((sub / "train.jsonl").read_bytes())
    base = [x for x in FLOWER_TINY if not x.startswith(("data.", "model.n_", "model.context"))] + [
        'data.source="dir"',
        f'model.path="{tiny_checkpoint}"',
    ]
    ref = in_process([*base, f'data.path="{everyone}"'], tmp_path)
    nodes = {100 + i: {"data-path": str(f)} for i, f in enumerate(folders)}
    nodes[101]["client-id"] = "carol"  # a node may also name which of its clients take part
    server_side = [*base, 'data.path="/not/on/the/server"']
    summary = over_flower(server_side, tmp_path, MemoryGrid(nodes))
    assert (final_weights(tmp_path / "fl" / "fl") - ref).abs().max().item() <= 1e-6
    assert summary["runtime"]["nodes"] == {
        "100": ["alice", "bob"],
        "101": ["carol"],
        "102": ["dave", "erin"],
    }


def test_user_data_over_flower_needs_a_shared_checkpoint(tmp_path):
    over = [*FLOWER_TINY, 'data.source="dir"', 'data.path="/x"']
    with pytest.raises(ConfigError, match="needs model.path"):
        over_flower(over, tmp_path, MemoryGrid({100: {"data-path": str(tmp_path)}}))


def test_ckks_over_flower(tmp_path):
    """CKKS: the nodes hold the secret context (node-config ``ckks-keys``), the server only
    the public one; the result is the in-process one up to CKKS's approximation."""
    pytest.importorskip("tenseal")
    from fedgpt.privacy.ckks import write_keys

    keys = tmp_path / "keys"
    write_keys(keys)
    node_keys = tmp_path / "node_keys"
    node_keys.mkdir()
    (node_keys / "secret_context.bin").write_bytes((keys / "secret_context.bin").read_bytes())
    over = [*FLOWER_TINY, 'privacy.secure_aggregation="ckks"', f'privacy.ckks_keys="{keys}"']
    over = with_identities(over, tmp_path / "identities")
    ref = in_process(over, tmp_path)
    nodes = split_nodes(FLOWER_TINY)
    for nc in nodes.values():
        nc["ckks-keys"] = str(node_keys)
    over_flower(over, tmp_path, MemoryGrid(nodes))
    assert (final_weights(tmp_path / "fl" / "fl") - ref).abs().max().item() <= 1e-4


def test_refused_pushes_and_unknown_clients_become_failures():
    from fedgpt.runtime import Failure, Message
    from fedgpt.runtime.flower.runtime import FlowerRuntime

    class Refusing(MemoryGrid):
        def push_messages(self, messages):
            list(messages)
            return []  # what Flower's grid returns when the SuperLink refuses the payload

    grid = Refusing({5: {"client-id": "a"}})
    seen = []
    rt = FlowerRuntime(grid, {"a": 5}, timeout=1)
    out = rt.send_and_receive(
        {"a": Message("evaluate"), "b": Message("evaluate")}, on_reply=lambda c, r: seen.append(c)
    )
    assert out["a"] == Failure("Flower could not push the message to node 5")
    assert out["b"] == Failure("client b is served by no connected SuperNode")
    assert sorted(seen) == ["a", "b"]


def test_quorum_and_fault_injection_settings(tmp_path, monkeypatch):
    nodes = split_nodes(FLOWER_TINY)
    grid = MemoryGrid(nodes)
    orig = server_app.handshake

    def handshake_then_two_nodes_die(*a, **k):
        out = orig(*a, **k)
        grid.down.update(list(nodes)[:2])
        return out

    monkeypatch.setattr(server_app, "handshake", handshake_then_two_nodes_die)
    over = [*FLOWER_TINY, "federation.min_clients=6", "runtime.min_replies=3"]
    settings = FlowerSettings(
        overrides=(*over, f'out_dir="{tmp_path}"', 'name="q"'), node_wait=0, timeout=0.2
    )
    summary = server_app.run(grid, settings)
    assert summary["rounds"] == 0 and "quorum not reached in round 1" in summary["stopped"]
    assert verify_run(tmp_path / "q").ok


def test_server_stopped_mid_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """The server process dies after round 1 (checkpoint and ledger written); a new
    ServerApp with ``resume`` = the run folder finishes round 2 with exactly the weights
    (and ledger) of an uninterrupted run."""
    from fedgpt.federation.loop import FederatedServer

    over = [*FLOWER_TINY, "federation.eval_every=1"]
    ref = in_process(over, tmp_path)
    real = FederatedServer.run_round
    calls = {"n": 0}

    def dies_in_round_2(self, state):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("server killed")
        return real(self, state)

    monkeypatch.setattr(FederatedServer, "run_round", dies_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        over_flower(over, tmp_path, MemoryGrid(split_nodes(over)))
    run_dir = tmp_path / "fl" / "fl"
    assert load_checkpoint(latest_checkpoint(run_dir / "checkpoints")).round == 1
    monkeypatch.setattr(FederatedServer, "run_round", real)
    node_app._CACHE.clear()  # the nodes may have restarted too
    settings = FlowerSettings(min_nodes=1, node_wait=0, resume=str(run_dir))
    summary = server_app.run(MemoryGrid(split_nodes(over)), settings)
    assert summary["rounds"] == 2
    assert torch.equal(final_weights(run_dir), ref)
    verdict = verify_run(run_dir)
    assert verdict.ok and verdict.rounds == 2, verdict.problems
    ours = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    theirs = [
        json.loads(x) for x in (tmp_path / "ref" / "ref" / "ledger.jsonl").read_text().splitlines()
    ]
    pick = lambda es: [e["global_weights"] for e in es if e.get("kind") == "round"]  # noqa: E731
    assert pick(ours) == pick(theirs)


def test_distributed_dp_runs_over_flower(tmp_path):
    """Distributed DP's noise is drawn on the clients from the OS, so the weights cannot
    equal another run's; the Flower run completes, reports the same ε as the accountant,
    its ledger verifies, and the clients learned the run's noise multiplier."""
    from fedgpt.build import client_setup, make_privacy
    from fedgpt.privacy import skellam_accountant as sa

    extra = ['privacy.mode="distributed_dp"', 'privacy.secure_aggregation="secagg"',
             "federation.min_clients=3", "privacy.noise_multiplier=0.7"]  # fmt: skip
    overrides = with_identities([*FLOWER_TINY, *extra], tmp_path / "identities")
    summary = over_flower(overrides, tmp_path, MemoryGrid(split_nodes(overrides)))
    rows = [json.loads(x) for x in (tmp_path / "fl/fl/metrics.jsonl").read_text().splitlines()]
    n = summary["dataset"]["num_clients"]
    want = sa.epsilon(0.7, 3 / n, 2, 1e-5, clip=1.0, dim=sa.MAX_DIM, scale=2**24)
    assert summary["rounds"] == 2 and rows[-1]["epsilon"] == pytest.approx(want)
    assert all(r["participants"] == 3 for r in rows)  # a count: the cohorts are hidden
    assert verify_run(tmp_path / "fl" / "fl").ok
    cfg = load_config(None, overrides)
    setup = client_setup(cfg, [f"c{i}" for i in range(n)], make_privacy(cfg, n), {})
    assert setup["z"] == 0.7 and len(setup["clients"]) == n


def killed_and_resumed(over, tmp_path, monkeypatch, kill_in: int, mid_round: bool):
    """Run over the in-memory grid until the server dies in round ``kill_in`` (at its
    start, or after the round ran when ``mid_round``: before its checkpoint), then resume
    it with every node restarted; the run folder and the resumed run's summary."""
    from fedgpt.federation.loop import FederatedServer

    real = FederatedServer.run_round
    monkeypatch.setattr(FederatedServer, "run_round", kill_in_round(real, kill_in, mid_round))
    with pytest.raises(KeyboardInterrupt):
        over_flower(over, tmp_path, MemoryGrid(split_nodes(over)))
    monkeypatch.setattr(FederatedServer, "run_round", real)
    node_app._CACHE.clear()
    run_dir = tmp_path / "fl" / "fl"
    settings = FlowerSettings(min_nodes=1, node_wait=0, resume=str(run_dir))
    return run_dir, server_app.run(MemoryGrid(split_nodes(over)), settings)


STATE_CASES = {
    "dp_sgd-target": ['privacy.mode="dp_sgd"', "privacy.noise_multiplier=1.0",
                      "privacy.target_epsilon=1.7", "federation.fraction=1.0"],
    "local_dp": ['privacy.mode="local_dp"', "privacy.noise_multiplier=0.5"],
    "keep_optimizer_state": ["client.keep_optimizer_state=true", 'client.optimizer="adamw"'],
    "fedmd": ['data.public_plays=["macbeth"]', 'federation.distill="fedmd"',
              "federation.distill_windows=4", "federation.fedmd_client_layers=1"],
}  # fmt: skip


@pytest.mark.parametrize("kill_in", [2, 3, "mid-3"])
@pytest.mark.parametrize("case", sorted(STATE_CASES))
def test_a_restarted_server_and_nodes_resume_the_clients_state(
    case, kill_in, tmp_path, monkeypatch
):
    """The server dies in round ``kill_in`` (at its start, or "mid-3": after the clients
    of round 3 trained and replied, before its checkpoint) and every node restarts (fresh
    Flower ``context.state``: a new Flower run). The nodes take their clients' state from their
    own disk, keyed by the run folder's identity, at the round the server resumes after;
    the run ends with exactly the uninterrupted in-process weights, refusals and ε."""

    over = [*FLOWER_TINY, "federation.rounds=4", "federation.eval_every=100",
            "privacy.reproducible_noise=true", *STATE_CASES[case]]  # fmt: skip
    ref = in_process(over, tmp_path)
    mid = kill_in == "mid-3"  # after the clients of round 3 replied: nodes a round ahead
    run_dir, _ = killed_and_resumed(over, tmp_path, monkeypatch, 3 if mid else kill_in, mid)
    assert torch.equal(final_weights(run_dir), ref)
    keep = ("round", "participants", "dropped", "epsilon")
    rows = lambda d: [{k: json.loads(x).get(k) for k in keep}  # noqa: E731
                      for x in (d / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    assert rows(run_dir) == rows(tmp_path / "ref" / "ref")
    if case == "dp_sgd-target":
        assert max(r["epsilon"] for r in rows(run_dir)) <= 1.7
        assert any(r["dropped"] for r in rows(run_dir)), rows(run_dir)  # budgets refused


BUDGET_CASES = {
    "dp_sgd": ['privacy.mode="dp_sgd"', "privacy.noise_multiplier=1.0",
               "privacy.target_epsilon=1.06"],
    "local_dp": ['privacy.mode="local_dp"', "privacy.noise_multiplier=4.0",
                 "privacy.target_epsilon=4.3"],
}  # fmt: skip


def count_releases(monkeypatch) -> dict:
    """Every update that leaves a client, whatever run or restart it belongs to: per
    client, the list of (noise multiplier, sample rate, steps) of each release."""
    from fedgpt.privacy import dp_sgd, local_dp

    seen: dict[str, list] = {}
    real_sgd, real_ldp = dp_sgd.dp_sgd_update, local_dp.LocalDPRelease.after

    def sgd(fm, weights, text, cfg, pcfg, gen, cid, rnd, *rest):
        result, q = real_sgd(fm, weights, text, cfg, pcfg, gen, cid, rnd, *rest)
        if not isinstance(result, dp_sgd.Failure):
            seen.setdefault(cid, []).append((pcfg.noise_multiplier, q, cfg.local_steps))
        return result, q

    def ldp(self, ctx, update):
        seen.setdefault(ctx.client_id, []).append((self.z, 1.0, 1))
        return real_ldp(self, ctx, update)

    monkeypatch.setattr(dp_sgd, "dp_sgd_update", sgd)
    monkeypatch.setattr(local_dp.LocalDPRelease, "after", ldp)
    return seen


def true_epsilon(case: str, releases: list, delta: float = 1e-5) -> float:
    from fedgpt.privacy.accountant import Accountant
    from fedgpt.privacy.local_dp import local_epsilon

    if case == "local_dp":
        return local_epsilon(releases[0][0], len(releases), delta) if releases else 0.0
    steps = [(z, q) for z, q, k in releases for _ in range(k)]
    return Accountant(delta, "rdp", steps).epsilon()


@pytest.mark.parametrize("case", sorted(BUDGET_CASES))
def test_a_round_redone_after_a_crash_is_charged_to_the_budget(case, tmp_path, monkeypatch):
    """With noise from the OS (no ``reproducible_noise``), the server dies after the clients
    of round 3 released their updates, before its checkpoint; the nodes restart and the
    resumed server redoes round 3 with fresh noise. Each release that left a client counts:
    counting every one of them, over both runs, no client's true ε exceeds the target (the
    node charges the releases of the lost round to the budget, from its own disk)."""

    over = [*FLOWER_TINY, "federation.rounds=5", "federation.eval_every=100",
            "federation.fraction=1.0", *BUDGET_CASES[case]]  # fmt: skip
    target = float(BUDGET_CASES[case][-1].split("=")[1])
    seen = count_releases(monkeypatch)
    run_dir, summary = killed_and_resumed(over, tmp_path, monkeypatch, 3, mid_round=True)
    assert summary["rounds"] == 5
    worst = max(true_epsilon(case, r) for r in seen.values())
    assert worst <= target, {c: true_epsilon(case, r) for c, r in seen.items()}
    # the nodes charged the lost round: their last state counts one unseen release for
    # each client that trained in it, and the budget bound (a client refused after it)
    from fedgpt.federation.ledger_keys import fedgpt_home
    from fedgpt.runtime.flower.node_state import NodeState

    unseen: dict = {}
    for folder in (fedgpt_home() / "nodes").glob("*/*"):
        store = NodeState(folder.parent.parent, folder.parent.name, [])
        store.folder = folder
        last = store.load(10**6) or {}
        raw = last.get("releases_unseen" if case == "local_dp" else "dp_unseen", b"{}")
        unseen.update(json.loads(raw))
    trained_in_3 = {c for c, r in seen.items() if len(r) >= 3}
    assert trained_in_3 and set(unseen) == trained_in_3, (unseen, trained_in_3)
    assert max(true_epsilon(case, seen[c]) for c in trained_in_3) > 0.9 * target


def test_a_plain_round_is_one_exchange_and_every_receipt_arrives(tmp_path):
    """The run setup rides with the first batch and each round's receipts with the next
    one: hello, one exchange per round, the final evaluation, and one to hand over the last
    round's receipts. Every participant still holds a receipt of every round it took part
    in, and the ledger agrees with all of them."""
    rounds = 3
    over = [*FLOWER_TINY, f"federation.rounds={rounds}", "federation.eval_every=1000"]
    nodes = split_nodes(over)
    for n, c in nodes.items():
        c["receipts-dir"] = str(tmp_path / "receipts" / str(n))
    grid = MemoryGrid(nodes)
    summary = over_flower(over, tmp_path, grid)
    assert summary["rounds"] == rounds
    assert grid.pushes == rounds + 3
    run = tmp_path / "fl" / "fl"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    taken = sum(len(r["participants"]) for r in rows)
    files = sorted((tmp_path / "receipts").rglob("receipts.jsonl"))
    verdict = verify_run(run, receipts=files)
    assert verdict.ok, verdict.problems
    assert verdict.receipts == taken and taken >= 2 * rounds


@pytest.fixture
def agent_parent(monkeypatch):
    """The ClientApps' parent process, as Flower's SuperExec would be: the node agents
    they start live as long as it does."""
    import os
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    monkeypatch.setattr(os, "getppid", lambda: parent.pid)
    yield parent
    parent.kill()
    parent.wait()


def agent_sockets(nodes: dict, parent: int) -> list:
    return [agent.socket_path({**c, "agent-idle": 60}, parent) for c in nodes.values()]


def test_the_node_agent_answers_as_the_clientapp_process_would(tmp_path, agent_parent):
    """Every message goes through Flower's ClientApp entry point, which hands it to the
    node's agent process over its socket: the same final weights and ledger as in-process,
    one agent per node for the whole run, which goes when the SuperExec goes."""
    import time

    over = with_identities([*FLOWER_TINY, "client.keep_optimizer_state=true"], tmp_path / "ids")
    ref = in_process(over, tmp_path)
    nodes = {n: {**c, "agent-idle": 60} for n, c in split_nodes(over).items()}
    grid = MemoryGrid(nodes, handler=client_app.forward)
    over_flower(over, tmp_path, grid)
    assert (final_weights(tmp_path / "fl" / "fl") - ref).abs().max().item() <= 1e-6
    assert verify_run(tmp_path / "fl" / "fl").ok
    sockets = agent_sockets(nodes, agent_parent.pid)
    assert all(p.exists() for p in sockets) and not node_app._CACHE  # the work was there
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in sockets)
    assert sockets[0].parent.stat().st_mode & 0o777 == 0o700
    agent_parent.kill()
    agent_parent.wait()
    end = time.monotonic() + 10
    while any(p.exists() for p in sockets) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(p.exists() for p in sockets)  # every agent left with its parent
    assert not any(p.with_suffix(".lock").exists() for p in sockets)  # and tidied up


def test_a_node_whose_agent_cannot_start_answers_itself(tmp_path, agent_parent, caplog):
    nodes = {n: {**c, "agent-idle": "soon"} for n, c in split_nodes(FLOWER_TINY).items()}
    grid = MemoryGrid(nodes, handler=client_app.forward)
    ref = in_process(FLOWER_TINY, tmp_path)
    over_flower(FLOWER_TINY, tmp_path, grid)
    assert (final_weights(tmp_path / "fl" / "fl") - ref).abs().max().item() <= 1e-6
    assert "node agent unavailable" in caplog.text and node_app._CACHE


def test_an_error_in_the_agent_reaches_the_clientapp():
    import socket
    import threading

    from flwr.app import ConfigRecord, RecordDict

    def handler(content, ctx):
        raise ValueError("not a FedGPT batch")

    ours, theirs = socket.socketpair()
    server = threading.Thread(target=agent.serve_one, args=(theirs, handler))
    server.start()
    rd = RecordDict({"x": ConfigRecord({"a": 1})})
    agent.send_frames(ours, b"{}")
    agent.send_record(ours, rd)
    agent.send_record(ours, rd)
    status, why = agent.recv_frames(ours, 2)
    server.join()
    assert status == b"err" and why == b"ValueError: not a FedGPT batch"


def through_agent_socket(rd):
    """``rd`` sent as the agent sends records and read back at the other end."""
    import socket
    import threading

    ours, theirs = socket.socketpair()
    got = {}
    reader = threading.Thread(target=lambda: got.update(rd=agent.recv_record(theirs)))
    reader.start()
    agent.send_record(ours, rd)
    reader.join()
    return got["rd"]


def test_the_agent_sends_array_bytes_outside_the_protobuf_and_keeps_them_exact():
    """A protobuf message cannot exceed 2 GB, so each Array's bytes travel in a frame of
    their own; what arrives is the same records, bit for bit."""

    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    from fedgpt.runtime.flower.codec import decode_tensor, encode_tensor

    g = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(300, 7, generator=g),
        "b": torch.randn(5, generator=g).to(torch.bfloat16),
        "e": torch.zeros(0),
    }
    rd = RecordDict(
        {
            "0.meta": ConfigRecord({"client": "c", "blob": [b"\x00\xff"]}),
            "0.tensors": ArrayRecord({k: encode_tensor(v) for k, v in tensors.items()}),
        }
    )
    frames = agent.record_frames(rd)
    head = frames[1]
    assert len(frames) == 2 + 3 and len(head) < 1000  # the 8.4 kB of weights are not in it
    back = through_agent_socket(rd)
    assert back["0.meta"]["blob"] == [b"\x00\xff"] and back["0.meta"]["client"] == "c"
    for k, v in tensors.items():
        t = decode_tensor(back["0.tensors"][k])
        assert t.dtype == v.dtype and t.shape == v.shape and torch.equal(t, v)


def test_an_agent_folder_another_can_enter_is_refused_and_the_node_answers_itself(
    tmp_path, monkeypatch, caplog
):
    """Someone who made the agents' folder first, open to others, could listen in or pose
    as the agent: the ClientApp refuses it and does the work itself."""
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    planted = tmp_path / f"fedgpt-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    with pytest.raises(agent.Unavailable):
        agent.socket_path({"client-id": "x"}, os.getpid())
    grid = MemoryGrid(split_nodes(FLOWER_TINY), handler=client_app.forward)
    ref = in_process(FLOWER_TINY, tmp_path)
    over_flower(FLOWER_TINY, tmp_path, grid)
    assert (final_weights(tmp_path / "fl" / "fl") - ref).abs().max().item() <= 1e-6
    assert "not a private folder" in caplog.text and not list(planted.glob("*.sock"))


def test_the_agent_sends_bytes_arrays_share_once():

    from flwr.app import Array, ArrayRecord, RecordDict

    from fedgpt.runtime.flower.codec import RAW

    data = b"\x01" * 5000
    one = Array(dtype="torch.uint8", shape=(5000,), stype=RAW, data=data)
    two = Array(dtype="torch.uint8", shape=(5000,), stype=RAW, data=data)
    other = Array(dtype="torch.uint8", shape=(3,), stype=RAW, data=b"abc")
    rd = RecordDict(
        {f"{i}.tensors": ArrayRecord({"w": a}) for i, a in enumerate([one, other, two])}
    )
    frames = agent.record_frames(rd)
    assert len(frames) == 2 + 2 and sum(memoryview(f).nbytes for f in frames) < 6000
    got = through_agent_socket(rd)
    back = [got[f"{i}.tensors"]["w"].data for i in range(3)]
    assert back == [data, b"abc", data] and back[0] is back[2]
