"""The node agent: one long-lived process per SuperNode that does the ClientApp's work.

Flower 1.42 starts a fresh ``flwr-clientapp`` process for every message. Importing
PyTorch and Transformers and rebuilding the model costs seconds of CPU per message, which
is most of what an exchange costs. So the ClientApp (:mod:`fedgpt.runtime.flower.client_app`)
stays thin (it imports neither) and hands each message to this agent over a Unix socket:
the agent keeps the heavy modules, the prepared model and the tokenised data loaded, runs
:func:`fedgpt.runtime.flower.node.handle_content` (the very handler a ClientApp process
runs without it) and sends back the reply and the node's new ``context.state``. Nothing
else moves: the agent holds no state of the run between messages beyond caches, so a
message answered through it equals one answered in the ClientApp process (tested), and a
ClientApp that cannot reach it handles the message itself.

The first ClientApp process of a node starts the agent (``python -m
fedgpt.runtime.flower.agent``) in a session of its own and waits until it listens. The
agent serves one message at a time and exits when the SuperNode's process that launched
the ClientApps is gone or after ``agent-idle`` seconds (node-config, default 600) without
a message. The socket lives in a folder only this user can enter (``$TMPDIR/fedgpt-UID``,
mode 0700); requests and replies are Flower's own protobuf records (``flwr.common.serde``)
with each Array's bytes in a frame of its own (so a message may exceed protobuf's 2 GB);
nothing is unpickled. ``--node-config "agent=false"`` turns the agent off.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IDLE = 600.0  # seconds without a message before the agent exits
START_WAIT = 300.0  # seconds a ClientApp waits for a new agent to listen
_LEN = struct.Struct(">Q")


class Unavailable(RuntimeError):
    """The agent could not be started or reached; the ClientApp does the work itself."""


class AgentError(RuntimeError):
    """The agent handled the message and failed (as the handler would have in-process)."""


def enabled(node_config) -> bool:
    """Whether this node uses an agent (node-config ``agent``, default true)."""
    return str(node_config.get("agent", "true")).strip().lower() not in ("false", "0", "no")


def socket_path(node_config, parent: int) -> Path:
    """Where the agent of this node (its configuration, this FedGPT and Python, the
    process ``parent`` that launches its ClientApps) listens."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("fedgpt")
    except PackageNotFoundError:  # a source tree on the path
        __version__ = "unknown"
    folder = Path(tempfile.gettempdir()) / f"fedgpt-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise Unavailable(f"{folder} is not a private folder of this user")
    key = json.dumps([dict(node_config), __version__, sys.executable, parent], sort_keys=True)
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.sock"


# --- framing -------------------------------------------------------------------------


def send_frames(conn: socket.socket, *frames: bytes | memoryview) -> None:
    for f in frames:
        conn.sendall(_LEN.pack(memoryview(f).nbytes))
        conn.sendall(f)


def recv_frames(conn: socket.socket, n: int) -> list[bytes]:
    return [_recv_exact(conn, _LEN.unpack(_recv_exact(conn, _LEN.size))[0]) for _ in range(n)]


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = conn.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("the connection closed mid-frame")
        got += k
    return bytes(buf)


def record_frames(rd) -> list[bytes | memoryview]:
    """``rd`` as frames: which data frame each Array reads (Arrays that share one bytes
    object, as Flower inflates identical content, share a frame), Flower's protobuf of the
    structure with every Array's bytes left out (a protobuf message cannot exceed 2 GB),
    then the data frames, unchanged."""
    from flwr.app import Array, ArrayRecord, RecordDict
    from flwr.common.serde import recorddict_to_proto

    light, data, index, seen = RecordDict(), [], [], {}
    for key, record in rd.items():
        if isinstance(record, ArrayRecord):
            arrays = list(record.items())
            for _, a in arrays:
                if id(a.data) not in seen:
                    seen[id(a.data)] = len(data)
                    data.append(memoryview(a.data))
                index.append(seen[id(a.data)])
            record = ArrayRecord({k: _hollow(Array, a) for k, a in arrays})
        light[key] = record
    head = recorddict_to_proto(light).SerializeToString()
    return [json.dumps([len(data), index]).encode(), head, *data]


def _hollow(Array, a):
    """``a`` without its bytes (they travel in a frame of their own)."""
    return Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=b"")


def recv_record(conn: socket.socket):
    """The RecordDict :func:`record_frames` sent."""
    from flwr.app import ArrayRecord
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    table, head = recv_frames(conn, 2)
    n, index = json.loads(table)
    rd = recorddict_from_proto(ProtoRecordDict.FromString(head))
    arrays = [a for r in rd.values() if isinstance(r, ArrayRecord) for a in r.values()]
    if len(arrays) != len(index) or not all(0 <= i < n for i in index):
        raise ConnectionError(f"a frame table for {len(index)} arrays came with {len(arrays)}")
    data = recv_frames(conn, n)
    for a, i in zip(arrays, index, strict=True):
        a.data = data[i]
    return rd


def send_record(conn: socket.socket, rd) -> None:
    send_frames(conn, *record_frames(rd))


# --- the ClientApp's side ------------------------------------------------------------


def call(node_config, state, content, parent: int | None = None):
    """(reply content, new context.state) for ``content``, from this node's agent
    (started if it is not running). Raises :class:`Unavailable` when it cannot be used,
    :class:`AgentError` when the handler failed there."""
    parent = os.getppid() if parent is None else parent
    path = socket_path(node_config, parent)
    conn = _connect(path) or _start(path, node_config, parent)
    with conn:
        try:
            send_frames(conn, json.dumps(dict(node_config)).encode())
            send_record(conn, state)
            send_record(conn, content)
            status = recv_frames(conn, 1)[0]
            if status != b"ok":
                raise AgentError(recv_frames(conn, 1)[0].decode(errors="replace"))
            return recv_record(conn), recv_record(conn)
        except OSError as exc:  # the agent died mid-message: nothing was answered
            raise Unavailable(f"the node agent went away ({exc})") from None


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def _start(path: Path, node_config, parent: int) -> socket.socket:
    """Start the agent (one ClientApp at a time, under a lock) and connect to it."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(path)  # another ClientApp may have started it meanwhile
        if conn is not None:
            return conn
        path.unlink(missing_ok=True)  # a dead agent's socket
        idle = str(node_config.get("agent-idle", IDLE))
        cmd = [sys.executable, "-m", "fedgpt.runtime.flower.agent", str(path), str(parent), idle]
        with open(path.with_suffix(".log"), "ab") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        end = time.monotonic() + START_WAIT
        while time.monotonic() < end:
            conn = _connect(path)
            if conn is not None:
                return conn
            if proc.poll() is not None:
                raise Unavailable(f"the node agent exited ({proc.returncode}); see {out.name}")
            time.sleep(0.05)
        proc.kill()
        raise Unavailable(f"the node agent did not listen within {START_WAIT:g} s")


# --- the agent's side ----------------------------------------------------------------


class _Context:
    """What the handler reads of Flower's ``Context``: the node's config and state."""

    def __init__(self, node_config: dict, state):
        self.node_config, self.state = node_config, state


def serve_one(conn: socket.socket, handle) -> None:
    """Answer one request: the reply and the new state, or the handler's error."""
    raw_config = recv_frames(conn, 1)[0]
    state, content = recv_record(conn), recv_record(conn)
    try:
        ctx = _Context(json.loads(raw_config), state)
        reply = handle(content, ctx)
        frames = [b"ok", *record_frames(reply), *record_frames(ctx.state)]
    except Exception as exc:  # reported to the ClientApp, which raises it to Flower
        frames = [b"err", f"{type(exc).__name__}: {exc}".encode()]
    send_frames(conn, *frames)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(path: Path, parent: int, idle: float) -> None:
    """Listen on ``path`` until ``parent`` is gone or ``idle`` seconds pass unasked."""
    from fedgpt.runtime.flower.node import handle_content  # the heavy imports, once

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o600)
    server.listen(8)
    server.settimeout(1.0)
    last = time.monotonic()
    try:
        while alive(parent) and time.monotonic() - last < idle:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                try:
                    serve_one(conn, handle_content)
                except (OSError, ValueError) as exc:  # a ClientApp that went away
                    print(f"request abandoned: {exc!r}", file=sys.stderr, flush=True)
            last = time.monotonic()
    finally:
        _leave(server, path)


def _leave(server: socket.socket, path: Path) -> None:
    """Stop listening and remove the socket, unless a newer agent already owns the path
    (under the start lock, so no ClientApp sees it half gone)."""
    mine = os.stat(path).st_ino if path.exists() else None
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        server.close()
        try:
            if os.stat(path).st_ino == mine:
                path.unlink()
        except FileNotFoundError:
            pass
        log = path.with_suffix(".log")
        if log.exists() and log.stat().st_size == 0:
            log.unlink()
        path.with_suffix(".lock").unlink(missing_ok=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
