"""``runtime.workers = N``: in-process clients answered by N worker processes at once.

The first exchange that has work for them forks N workers, which then stay for the run
(:meth:`WorkerRuntime.close`, or the end of the server process, stops them). A fork
shares, copy-on-write, what the server process holds: the clients' tokenised data and the
model, so one model per worker, whatever the number of clients. For each exchange the
server process writes the tensors its messages carry (the round's global weights, once
however many messages carry them) into a shared-memory buffer and sends each worker only
the messages' configs, with the state of the clients it will answer; nothing model-sized
is pickled. Worker ``j`` answers the messages ``j, j + N, j + 2N, …`` of the exchange in
order, with ``threads // N`` torch threads; while they run, the server process uses one
(its idle torch threads would otherwise spin on the workers' cores: a 20-client round took
1.13 s with them and 0.96 s without, benchmarks/limits.py). Keeping the workers saves
each exchange a fork and an exit of the server-sized process and the workers' first,
cold, client (about 0.1 s of a 1-s round here).

A reply's update comes back through shared memory: each worker owns two slots of the
model's size, writes a float32 update there and sends only the reply's config over a
pipe. The server takes the replies in the exchange's order (so a sum folds in the same
order as a serial run, and the results are the same for the same seed) and frees a slot
once it has folded the update: the updates handed out by :meth:`stream` are *borrowed*
(``borrowed = True``), valid until the next one is asked for.

What the clients remember between messages (optimiser memory, DP-SGD steps, local-DP
releases, the hashes of the updates sent) lives in the server process's
:class:`~fedgpt.federation.client_app.ClientApp`: each exchange hands every worker the
state of the clients it answers and takes back their new state when its share is done.
Only ``train`` (without secure aggregation) and ``evaluate`` go to workers; the secure
sums' stages and receipts are answered in the server process, one after another. A worker
that dies costs the replies of its share; the next exchange forks a new set.
"""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing as mp
import os
import weakref
from collections.abc import Iterator, Mapping

import torch

from fedgpt.messages import Failure, Message, Reply
from fedgpt.runtime.inprocess import InProcessRuntime

log = logging.getLogger(__name__)

SLOTS = 2  # per worker: one update being folded while the next is written
MIN_SHARED = 1024  # tensors smaller than this travel in the pipe
ALIGN = 64  # bytes: each tensor of the shared input buffer starts on a cache line


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
        self._pool: _Pool | None = None

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
        pool = self._start(tasks) if len(tasks) > 1 else None
        done = False
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
            done = True
        finally:
            if pool is not None and not pool.finish(self.handler, done):
                self.close()  # a share left unread: these workers cannot take another
            torch.set_num_threads(threads)

    def _start(self, tasks: list[tuple[str, Message]]) -> _Pool:
        """This exchange handed to the workers, forked anew if there are none that fit."""
        up = max(max((_numel(m) for _, m in tasks), default=0), MIN_SHARED)
        where, down = _layout([m for _, m in tasks])
        pool = self._pool
        if pool is None or pool.busy or not pool.fits(up, down):
            self.close()
            pool = self._pool = _Pool(self, up, down)
        pool.start(tasks, where, getattr(self.handler, "state_dict", None))
        return pool

    def close(self) -> None:
        """Stop the workers (the next exchange forks new ones)."""
        if self._pool is not None:
            self._pool.stop()
            self._pool = None


def _own(r: Reply) -> Reply:
    if not isinstance(r, Message) or not r.tensors:
        return r
    return Message(r.type, r.config, {k: t.clone() for k, t in r.tensors.items()}, r.blobs)


def _layout(messages) -> tuple[dict[int, tuple[int, torch.Tensor]], int]:
    """Where each distinct tensor of ``messages`` that travels through the shared buffer
    goes (id -> (byte offset, tensor)), and the bytes they take."""
    where, at = {}, 0
    for m in messages:
        for t in m.tensors.values():
            if t.numel() >= MIN_SHARED and id(t) not in where:
                where[id(t)] = (at, t)
                at += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    return where, at


class _Pool:
    """The forked workers of a run and the server's side of their pipes."""

    def __init__(self, rt: WorkerRuntime, up: int, down: int):
        self.n = rt.workers
        self.slots = torch.empty((self.n, SLOTS, up)).share_memory_()
        self.down = torch.empty(max(down, ALIGN), dtype=torch.uint8).share_memory_()
        ctx = mp.get_context("fork")
        self.conns, self.procs = [], []
        for j in range(self.n):
            here, there = ctx.Pipe()
            p = ctx.Process(
                target=_serve,
                args=(rt, j, self.slots[j], self.down, there, rt.threads, [*self.conns, here]),
                daemon=True,
            )  # fmt: skip
            p.start()
            there.close()
            self.conns.append(here)
            self.procs.append(p)
        self._stopper = weakref.finalize(self, _stop, self.conns, self.procs)
        self.dead: set[int] = set()
        self.held: tuple[int, int] | None = None  # (worker, slot) of the reply handed out
        self.busy = False  # an exchange is under way

    def fits(self, up: int, down: int) -> bool:
        alive = not self.dead and all(p.is_alive() for p in self.procs)
        return alive and up <= self.slots.shape[2] and down <= self.down.numel()

    def start(self, tasks: list[tuple[str, Message]], where: dict, state) -> None:
        """Write the exchange's shared tensors (``where``: :func:`_layout`), then give each
        worker its share with the state of the clients in it."""
        for at, t in where.values():
            n = t.numel() * t.element_size()
            self.down[at : at + n].view(t.dtype).copy_(t.reshape(-1))
        self.busy = True
        self.order = {cid: i for i, (cid, _) in enumerate(tasks)}
        self.n_used = min(self.n, len(tasks))
        full = state() if state is not None else None
        for j in range(self.n_used):
            mine = tasks[j :: self.n_used]
            items = [(cid, _pack(m, where)) for cid, m in mine]
            states = client_states(full, {c for c, _ in mine}) if full is not None else None
            try:
                self.conns[j].send(("exchange", items, states))
            except OSError:
                self.dead.add(j)

    def next(self, cid: str) -> Reply:
        """The reply to ``cid``'s message (the next one of its worker, in order)."""
        j = self.order[cid] % self.n_used
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
            except OSError:  # the worker is gone: what it sent is still readable
                self.dead.add(j)

    def finish(self, handler, complete: bool) -> bool:
        """Take each worker's client state and merge it. False when these workers cannot
        serve another exchange (a worker died, or the consumer stopped reading early)."""
        if not complete:
            return False
        self.busy = False
        states = []
        for j in range(self.n_used):
            if j in self.dead:
                continue
            try:
                kind, got = self.conns[j].recv()
            except (EOFError, OSError):
                kind = None
            if kind == "state":
                states.append(got)
            else:
                log.warning("worker %d ended without its client state", j)
                self.dead.add(j)
        if states and hasattr(handler, "load_state_dict"):
            handler.load_state_dict(merge_states(handler.state_dict(), states))
        return not self.dead

    def stop(self) -> None:
        self._stopper()


def _stop(conns, procs) -> None:
    for conn in conns:
        try:
            conn.send(None)
        except OSError:
            pass
        conn.close()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join()


def _numel(m: Message) -> int:
    w = m.tensors.get("weights")
    return int(w.numel()) if w is not None else 0


def _pack(m: Message, where: dict):
    """``m`` for the pipe: its shared tensors as (offset, dtype, shape) in the buffer."""
    small = {k: t for k, t in m.tensors.items() if id(t) not in where}
    shared = {k: (where[id(t)][0], t.dtype, tuple(t.shape)) for k, t in m.tensors.items()
              if id(t) in where}  # fmt: skip
    return m.type, m.config, small, shared, m.blobs


def _unpack(packed, down: torch.Tensor) -> Message:
    mtype, config, small, shared, blobs = packed
    tensors = dict(small)
    for name, (at, dtype, shape) in shared.items():
        n = dtype.itemsize * math.prod(shape)
        tensors[name] = down[at : at + n].view(dtype).view(shape)
    return Message(mtype, config, tensors, blobs)


def _serve(rt: WorkerRuntime, j: int, slots: torch.Tensor, down, conn, threads, others) -> None:
    """A worker: exchange after exchange, answer its share in order, updates into the
    slots, then send its clients' new state; exits when the server says so or is gone."""
    for other in others:  # the server's ends of this and the earlier pipes: held here, they
        other.close()  # would keep the workers waiting after the server process is gone
    torch.set_num_threads(threads)
    free = list(range(SLOTS))
    state = getattr(rt.handler, "state_dict", None)
    try:
        while True:
            job = conn.recv()
            if isinstance(job, int):  # a slot the server freed after the last exchange
                free.append(job)
                continue
            if job is None:
                break
            _, items, states = job
            if states is not None:  # these clients' state, as the server process holds it
                rt.handler.load_state_dict(states)
            _answer_share(rt, items, down, slots, conn, free)
            conn.send(("state", client_states(state(), {c for c, _ in items}) if state else {}))
    except (EOFError, OSError):  # the server process is gone
        pass
    except Exception as exc:  # the server sees the rest of this share as failures
        log.warning("worker %d failed: %r", j, exc)
    finally:
        conn.close()
        os._exit(0)


def _answer_share(rt, items, down, slots: torch.Tensor, conn, free: list[int]) -> None:
    for cid, packed in items:
        reply = rt.call(cid, _unpack(packed, down))
        if not isinstance(reply, Message):
            conn.send(("failure", reply.reason))
            continue
        big = _shared_part(reply.tensors, slots.shape[1])
        while big and not free:
            free.append(conn.recv())  # wait until the server folded an earlier one
        slot = free.pop(0) if big else -1
        shared = {}
        for name, t in big.items():
            slots[slot, : t.numel()].copy_(t.reshape(-1))
            shared[name] = (tuple(t.shape), t.numel())
        small = {k: t for k, t in reply.tensors.items() if k not in big}
        conn.send(("reply", (reply.type, reply.config, small, shared, reply.blobs, slot)))


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
