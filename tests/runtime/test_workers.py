"""``runtime.workers``: clients answered by forked worker processes give the same weights
and the same client state as one process for the same seed; the workers stay for the run
and carry each client's state from the server process, whichever worker answers it; a
worker that dies costs only its clients' replies and is replaced; the workers end with
the run, and when the server process is killed; faults apply as in the serial runtime."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from fedgpt.config import load_config
from fedgpt.experiment import run_experiment
from fedgpt.runtime import InProcessRuntime, Message
from fedgpt.runtime.workers import WorkerRuntime, _decode, client_states, merge_states


def run(tmp_path, workers, *extra):
    out = tmp_path / f"w{workers}"
    cfg = load_config(
        None,
        [*TINY, "baselines.enabled=false", "federation.rounds=3", "federation.min_clients=4",
         f"runtime.workers={workers}", f"runtime.threads={workers}", f'out_dir="{out}"',
         'name="x"', *extra],
    )  # fmt: skip
    summary = run_experiment(cfg, out / "x")
    last = sorted((out / "x" / "checkpoints").glob("round_*"))[-1]
    return load_file(last / "weights.safetensors")["weights"], summary, out / "x"


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["client.keep_optimizer_state=true", 'client.optimizer="adamw"'],
        ['privacy.mode="dp_sgd"', "privacy.target_epsilon=8", "privacy.reproducible_noise=true"],
        ['client.compression="topk"', "client.topk_fraction=0.05"],
    ],
    ids=["plain", "optimizer-memory", "dp_sgd", "topk-residuals"],
)
def test_workers_give_the_weights_and_client_state_of_one_process(tmp_path, extra):
    w1, s1, d1 = run(tmp_path, 1, *extra)
    w2, s2, d2 = run(tmp_path, 2, *extra)
    assert torch.equal(w1, w2)  # one torch thread per worker, as the serial run here
    lines = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
             for d in (d1, d2)]  # fmt: skip
    for a, b in zip(*lines, strict=True):
        assert a.get("participants") == b.get("participants")
        assert a.get("test_loss") == b.get("test_loss")
        assert a.get("epsilon") == b.get("epsilon")  # DP-SGD's steps came back from workers
    states = [client_state(d) for d in (d1, d2)]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        same(_decode(states[0][key]), _decode(states[1][key]))


def client_state(run_dir) -> dict[str, bytes]:
    last = sorted((run_dir / "checkpoints").glob("round_*"))[-1]
    return {k: v.numpy().tobytes() for k, v in load_file(last / "client_state.safetensors").items()}


def same(a, b):
    """Equal values, whatever the order of dict keys."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def handler_dying_in_a_worker(parent: int, victim: str):
    def handler(cid, msg):
        if cid == victim and os.getpid() != parent:
            os._exit(3)  # the worker process dies, as if killed
        delta = torch.full((2048,), float(len(cid)))
        return Message("train/result", {"round": 1, "num_examples": 1}, {"delta": delta})

    return handler


def test_a_dead_worker_fails_only_its_own_clients():
    rt = WorkerRuntime(handler_dying_in_a_worker(os.getpid(), "c2"), workers=2, threads=2)
    msgs = {
        f"c{i}": Message("train", {"round": 1}, {"weights": torch.zeros(2048)}) for i in range(6)
    }
    got = rt.send_and_receive(msgs)
    dead = {c for c, r in got.items() if not isinstance(r, Message)}
    # worker 0 answers c0, c2, c4: c0 before it died; worker 1 answers c1, c3, c5
    assert dead == {"c2", "c4"}
    assert all(float(got[c].tensors["delta"][0]) == 2.0 for c in ("c0", "c1", "c3", "c5"))


def test_streamed_updates_are_borrowed_and_copied_when_kept():
    rt = WorkerRuntime(handler_dying_in_a_worker(os.getpid(), "none"), workers=2, threads=2)
    msgs = {
        f"c{i}" * (i + 1): Message("train", {}, {"weights": torch.zeros(2048)}) for i in range(5)
    }
    kept = rt.send_and_receive(msgs)  # copies: every reply still holds its own values
    assert [float(kept[c].tensors["delta"][0]) for c in msgs] == [2.0, 4.0, 6.0, 8.0, 10.0]
    serial = InProcessRuntime(handler_dying_in_a_worker(os.getpid(), "none"))
    assert list(serial.send_and_receive(msgs)) == list(kept)


def test_drops_apply_before_the_workers():
    calls = []
    rt = WorkerRuntime(
        handler_dying_in_a_worker(os.getpid(), "none"), workers=2, threads=2,
        drop=lambda cid, kind: calls.append(cid) or cid == "c1",
    )  # fmt: skip
    msgs = {f"c{i}": Message("train", {}, {"weights": torch.zeros(2048)}) for i in range(4)}
    got = rt.send_and_receive(msgs)
    assert got["c1"].reason == "client dropped out (fault injection)"
    assert all(isinstance(got[c], Message) for c in ("c0", "c2", "c3"))


def test_client_state_merges_per_client():
    base = {"a": json.dumps({"x": 1, "y": 2}).encode(), "k": b"same"}
    w1 = client_states({"a": json.dumps({"x": 5, "y": 2, "z": 9}).encode(), "k": b"same"}, {"x"})
    w2 = client_states({"a": json.dumps({"x": 1, "y": 7}).encode(), "k": b"same"}, {"y"})
    merged = merge_states(base, [w1, w2])
    assert json.loads(merged["a"]) == {"x": 5, "y": 7}
    with pytest.raises(RuntimeError, match="not kept per client"):
        merge_states(base, [{"k": b"other"}])


def test_the_server_process_uses_one_torch_thread_while_workers_run():
    """Idle torch threads of the server process would spin on the workers' cores."""
    rt = WorkerRuntime(handler_dying_in_a_worker(os.getpid(), "none"), workers=2, threads=2)
    msgs = {f"c{i}": Message("train", {}, {"weights": torch.zeros(2048)}) for i in range(4)}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        during = [torch.get_num_threads() for _ in rt.stream(msgs)]
        assert during == [1, 1, 1, 1] and torch.get_num_threads() == 2  # and given back
    finally:
        torch.set_num_threads(before)


def test_workers_with_a_cuda_device_are_refused_in_one_line(monkeypatch):
    """Forked workers cannot share the parent's CUDA context: refused before the run."""
    from fedgpt.errors import ConfigError
    from fedgpt.experiment import in_process_runtime

    with pytest.raises(ConfigError, match="runtime.workers > 1 trains on the CPU"):
        load_config(None, ["runtime.workers=2", 'runtime.device="cuda"'])
    cfg = load_config(None, ["runtime.workers=2"])  # auto: on a machine with a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="cannot share the parent's CUDA context"):
        in_process_runtime(cfg, lambda cid, msg: None)


class Counting:
    """A client that remembers how many messages it answered (its state, per client)."""

    def __init__(self):
        self.seen: dict[str, int] = {}

    def __call__(self, cid, msg):
        self.seen[cid] = self.seen.get(cid, 0) + 1
        config = {"round": 1, "num_examples": 1, "pid": os.getpid(), "seen": self.seen[cid]}
        return Message("train/result", config, {"delta": msg.tensors["weights"] + 1})

    def state_dict(self):
        return {"seen": json.dumps(self.seen).encode()}

    def load_state_dict(self, saved):
        self.seen = json.loads(saved.get("seen", b"{}"))


def exchange(rt, ids, value=0.0):
    w = torch.full((4096,), value)  # one tensor for every message: it travels once
    return rt.send_and_receive({c: Message("train", {"round": 1}, {"weights": w}) for c in ids})


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended
        return f.read().split(")")[-1].split()[0] != "Z"


def test_workers_stay_for_the_run_and_carry_each_clients_state():
    app = Counting()
    rt = WorkerRuntime(app, workers=2, threads=2)
    try:
        first = exchange(rt, ["a", "b", "c", "d"], 1.0)
        # b, c, d now go to other workers than before: their counts come from the server
        second = exchange(rt, ["b", "c", "d"], 2.0)
        pids = {r.config["pid"] for r in [*first.values(), *second.values()]}
        assert len(pids) == 2 and os.getpid() not in pids  # the same two workers, twice
        assert [second[c].config["seen"] for c in "bcd"] == [2, 2, 2]
        assert all(torch.equal(second[c].tensors["delta"], torch.full((4096,), 3.0))
                   for c in "bcd")  # fmt: skip
        assert app.seen == {"a": 1, "b": 2, "c": 2, "d": 2}  # merged back
    finally:
        rt.close()
    time.sleep(0.2)
    assert not any(alive(p) for p in pids)


def test_a_dead_worker_is_replaced_at_the_next_exchange():
    rt = WorkerRuntime(handler_dying_in_a_worker(os.getpid(), "c2"), workers=2, threads=2)
    try:
        exchange(rt, [f"c{i}" for i in range(6)])
        again = exchange(rt, ["c0", "c1", "c3", "c4"])
        assert all(isinstance(r, Message) for r in again.values())
    finally:
        rt.close()


SERVER = """
import os, sys, time, torch
sys.path[:0] = [sys.argv[1], os.path.dirname(sys.argv[1])]
from test_workers import Counting, exchange
from fedgpt.runtime.workers import WorkerRuntime
rt = WorkerRuntime(Counting(), workers=2, threads=2)
got = exchange(rt, ["a", "b", "c", "d"])
print(" ".join(str(p) for p in {r.config["pid"] for r in got.values()}), flush=True)
time.sleep(600)
"""


def test_workers_end_when_the_server_process_is_killed():
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, os.path.dirname(__file__)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def test_a_run_stops_its_workers_before_its_report(tmp_path, monkeypatch):
    import psutil

    import fedgpt.callbacks

    def children():
        return {c.pid for c in psutil.Process().children(recursive=True) if alive(c.pid)}

    seen = []
    real = fedgpt.callbacks.Report.on_saved

    def on_saved(self, run, summary):  # the report is drawn with no worker alive
        time.sleep(0.2)
        seen.append(children() - before)
        real(self, run, summary)

    monkeypatch.setattr(fedgpt.callbacks.Report, "on_saved", on_saved)
    before = children()
    run(tmp_path, 2)
    time.sleep(0.2)
    assert seen == [set()]
    assert children() <= before
