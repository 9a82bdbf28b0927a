"""``runtime.workers = N``: in-process clients answered by N worker processes at once.

For each exchange the server process forks N workers. A fork shares, copy-on-write, what
the server process holds: the clients' tokenised data, the model and the round's global
weights, so nothing is pickled per round; each worker then loads the weights into its
own copy of the model (one model per worker, whatever the number of clients). Worker
``j`` answers the messages ``j, j + N, j + 2N, …`` of the exchange in order, with
``threads // N`` torch threads; while they run, the server process uses one (its idle
torch threads would otherwise spin on the workers' cores: a 20-client round took 1.13 s
with them and 0.96 s without, benchmarks/limits.py).

A reply's update comes back through shared memory: each worker owns two slots of the
model's size, writes a float32 update there and sends only the reply's config over a
pipe. The server takes the replies in the exchange's order (so a sum folds in the same
order as a serial run, and the results are the same for the same seed) and frees a slot
once it has folded the update: the updates handed out by :meth:`stream` are *borrowed*
(``borrowed = True``), valid until the next one is asked for.

What the clients remember between messages (optimiser memory, DP-SGD steps, local-DP
releases, the hashes of the updates sent) is each worker's state for the clients it
answered, sent back when its share is done and merged into the server process's
:class:`~fedgpt.federation.client_app.ClientApp`. Only ``train`` (without secure
aggregation) and ``evaluate`` go to workers; the secure sums' stages and receipts are
answered in the server process, one after another.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import os
from collections.abc import Iterator, Mapping

import torch

from fedgpt.messages import Failure, Message, Reply
from fedgpt.runtime.inprocess import InProcessRuntime

log = logging.getLogger(__name__)

SLOTS = 2  # per worker: one update being folded while the next is written
MIN_SHARED = 1024  # tensors smaller than this travel in the pipe


def parallel(msg: Message) -> bool:
    """Whether a worker may answer ``msg``."""
    return msg.type == "evaluate" or (
        msg.type == "train" and not msg.config.get("secure_aggregation")
    )


class WorkerRuntime(InProcessRuntime):
    """:class:`InProcessRuntime` with ``workers`` processes; faults, tampering and drops
    are applied in the server process exactly as there."""

    borrowed = True

    def __init__(self, handler, workers: int, threads: int = 0, **kw):
        super().__init__(handler, **kw)
        self.workers = workers
        self.threads = max(1, (threads or torch.get_num_threads()) // workers)
        self._slots: torch.Tensor | None = None

    def send_and_receive(self, messages, timeout=None, on_reply=None) -> dict[str, Reply]:
        replies: dict[str, Reply] = {}
        for sender, r in self.stream(messages, timeout):
            replies[sender] = _own(r)  # a borrowed update is copied out before its slot is reused
            if on_reply is not None:
                on_reply(sender, r)
        return replies

    def stream(self, messages: Mapping[str, Message], timeout=None) -> Iterator[tuple[str, Reply]]:
        deadline = timeout if timeout is not None else self.timeout
        early = {c: f for c, m in messages.items() if (f := self.before(c, m)) is not None}
        tasks = [(c, m) for c, m in messages.items() if c not in early and parallel(m)]
        threads = torch.get_num_threads()
        if len(tasks) > 1:  # the workers hold the cores: idle torch threads here would spin
            torch.set_num_threads(1)  # on them (the fold is one memory-bound pass anyway)
        pool = _Pool(self, tasks) if len(tasks) > 1 else None
        try:
            for cid, msg in messages.items():
                if cid in early:
                    reply: Reply = early[cid]
                elif pool is not None and parallel(msg):
                    reply = self.after(cid, msg, pool.next(cid), deadline)
                else:
                    reply = self.after(cid, msg, self.call(cid, msg), deadline)
                yield from (
                    self.tamper(cid, msg, reply) if self.tamper is not None else [(cid, reply)]
                )
                del reply
                if pool is not None:
                    pool.release()
        finally:
            if pool is not None:
                pool.close(self.handler)
            torch.set_num_threads(threads)

    def slots(self, numel: int) -> torch.Tensor:
        """(workers, SLOTS, numel) float32 in shared memory, reused across exchanges."""
        s = self._slots
        if s is None or s.shape[0] < self.workers or s.shape[2] < numel:
            self._slots = torch.empty((self.workers, SLOTS, numel)).share_memory_()
        return self._slots


def _own(r: Reply) -> Reply:
    if not isinstance(r, Message) or not r.tensors:
        return r
    return Message(r.type, r.config, {k: t.clone() for k, t in r.tensors.items()}, r.blobs)


class _Pool:
    """One exchange's forked workers and the server's side of their pipes."""

    def __init__(self, rt: WorkerRuntime, tasks: list[tuple[str, Message]]):
        numel = max((_numel(m) for _, m in tasks), default=0)
        self.slots = rt.slots(max(numel, MIN_SHARED))
        self.n = min(rt.workers, len(tasks))
        self.order = {cid: i for i, (cid, _) in enumerate(tasks)}
        ctx = mp.get_context("fork")
        self.conns, self.procs = [], []
        for j in range(self.n):
            mine = tasks[j :: self.n]
            here, there = ctx.Pipe()
            p = ctx.Process(
                target=_work, args=(rt, j, mine, self.slots[j], there, rt.threads), daemon=True
            )
            p.start()
            there.close()
            self.conns.append(here)
            self.procs.append(p)
        self.held: tuple[int, int] | None = None  # (worker, slot) of the reply handed out
        self.dead: set[int] = set()

    def next(self, cid: str) -> Reply:
        """The reply to ``cid``'s message (the next one of its worker, in order)."""
        j = self.order[cid] % self.n
        if j in self.dead:
            return Failure("worker process died")
        try:
            kind, got = self.conns[j].recv()
        except (EOFError, OSError):
            self.dead.add(j)
            return Failure("worker process died")
        if kind == "failure":
            return Failure(got)
        mtype, config, small, shared, blobs, slot = got
        tensors = dict(small)
        for name, (shape, numel) in shared.items():
            tensors[name] = self.slots[j, slot, :numel].view(shape)
        if shared:
            self.held = (j, slot)
        return Message(mtype, config, tensors, blobs)

    def release(self) -> None:
        """The consumer is done with the reply handed out: its slot may be written again."""
        if self.held is not None:
            j, slot = self.held
            self.held = None
            try:
                self.conns[j].send(slot)
            except OSError:  # the worker is done (or gone): what it sent is still readable
                pass

    def close(self, handler) -> None:
        """Collect each worker's client state, merge it, and reap the workers."""
        states = []
        for j, conn in enumerate(self.conns):
            if j not in self.dead:
                try:
                    while True:
                        kind, got = conn.recv()
                        if kind == "state":
                            states.append(got)
                            break
                except (EOFError, OSError):
                    log.warning("worker %d ended without its client state", j)
            conn.close()
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        if states and hasattr(handler, "state_dict"):
            handler.load_state_dict(merge_states(handler.state_dict(), states))


def _numel(m: Message) -> int:
    w = m.tensors.get("weights")
    return int(w.numel()) if w is not None else 0


def _work(rt: WorkerRuntime, j: int, tasks, slots: torch.Tensor, conn, threads: int) -> None:
    """A worker's share of the exchange: answer in order, updates into the slots."""
    torch.set_num_threads(threads)
    free = list(range(SLOTS))
    handled = []
    try:
        for cid, msg in tasks:
            reply = rt.call(cid, msg)
            handled.append(cid)
            if not isinstance(reply, Message):
                conn.send(("failure", reply.reason))
                continue
            big = _shared_part(reply.tensors, slots.shape[1])
            if big and not free:
                free.append(conn.recv())  # wait until the server folded an earlier one
            slot = free.pop(0) if big else -1
            shared = {}
            for name, t in big.items():
                slots[slot, : t.numel()].copy_(t.reshape(-1))
                shared[name] = (tuple(t.shape), t.numel())
            small = {k: t for k, t in reply.tensors.items() if k not in big}
            conn.send(("reply", (reply.type, reply.config, small, shared, reply.blobs, slot)))
        state = getattr(rt.handler, "state_dict", None)
        conn.send(("state", client_states(state(), set(handled)) if state else {}))
    except Exception as exc:  # the server sees the rest of this share as failures
        log.warning("worker %d failed: %r", j, exc)
    finally:
        conn.close()
        os._exit(0)


def _shared_part(tensors: Mapping[str, torch.Tensor], room: int) -> dict[str, torch.Tensor]:
    """The one tensor of a reply that goes through the slot: its largest float32 one that
    fits (the update), if it is not tiny."""
    fits = [(t.numel(), k) for k, t in tensors.items()
            if t.dtype == torch.float32 and MIN_SHARED <= t.numel() <= room]  # fmt: skip
    if not fits:
        return {}
    name = max(fits)[1]
    return {name: tensors[name]}


def client_states(state: Mapping[str, bytes], clients: set[str]) -> dict[str, bytes]:
    """The entries of ``state`` (each part's mapping client -> what it remembers, as JSON
    or a torch archive) that belong to ``clients``; other values are kept whole."""
    out = {}
    for key, raw in state.items():
        value = _decode(raw)
        if isinstance(value, dict):
            out[key] = _encode({c: v for c, v in value.items() if c in clients}, raw)
        else:
            out[key] = raw
    return out


def merge_states(base: Mapping[str, bytes], parts: list[Mapping[str, bytes]]) -> dict[str, bytes]:
    """``base`` with each worker's per-client entries laid over it."""
    out = dict(base)
    for part in parts:
        for key, raw in part.items():
            value = _decode(raw)
            old = _decode(out[key]) if key in out else None
            if isinstance(value, dict) and (old is None or isinstance(old, dict)):
                out[key] = _encode({**(old or {}), **value}, raw)
            elif key not in out or out[key] != raw:
                raise RuntimeError(f"client state {key!r} is not kept per client; cannot merge")
    return out


def _decode(raw: bytes):
    if raw[:1] in (b"{", b"["):
        return json.loads(raw)
    if raw[:2] == b"PK":
        return torch.load(io.BytesIO(raw), weights_only=True)
    return None


def _encode(value: dict, like: bytes) -> bytes:
    if like[:1] in (b"{", b"["):
        return json.dumps(value).encode()
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()
