"""FedGPT messages <-> Flower records, exactly.

One Flower message carries a *batch*: the FedGPT messages for every client a node serves
in one exchange (a node that serves several clients then starts one ClientApp process per
exchange, not one per client). For item ``i`` of a batch the :class:`~flwr.app.RecordDict`
holds

* ``"i.meta"``: a ConfigRecord with the FedGPT message type, the client id and the config
  dict as JSON (nested values, tuples and non-string keys are JSON-encoded: tuples come
  back as lists, keys as strings);
* ``"i.tensors"``: an ArrayRecord, one Array per tensor: NumPy ``.npy`` bytes for dtypes
  NumPy has, raw little-endian bytes (stype ``"torch.raw"``) for the others (bfloat16...),
  so every tensor comes back bit-identical with its dtype and shape;
* ``"i.blobs"``: a ConfigRecord, one ``list[bytes]`` per blob name.

A reply item may instead say ``failure`` (the client raised, or the node does not serve
that client): it decodes to :class:`~fedgpt.messages.Failure`. Flower-level
problems (an error reply, no reply in time) become ``Failure`` in the runtime.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedgpt.messages import Failure, Message, Reply

BATCH = "fedgpt.batch"  # ConfigRecord: {"version": 1, "size": n}
VERSION = 1
RAW = "torch.raw"  # stype of tensors NumPy cannot hold


class CodecError(ValueError):
    """A Flower record does not hold a well-formed FedGPT message."""


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"message config value of type {type(value).__name__} is not JSON-able")


def encode_tensor(t: torch.Tensor) -> Array:
    """One tensor as a Flower Array, bit-exact, dtype and shape kept."""
    t = t.detach().cpu()
    try:
        arr = t.contiguous().numpy()
    except TypeError:  # a dtype NumPy lacks (bfloat16, float8...): raw bytes
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return Array(dtype=str(t.dtype), shape=tuple(t.shape), stype=RAW, data=raw)
    return Array(arr)


def decode_tensor(a: Array) -> torch.Tensor:
    """The tensor an :func:`encode_tensor` Array holds (a fresh, writable tensor)."""
    if a.stype == RAW:
        name = a.dtype.removeprefix("torch.")
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise CodecError(f"unknown tensor dtype {a.dtype!r}")
        if not a.data:
            return torch.empty(a.shape, dtype=dtype)
        return torch.frombuffer(bytearray(a.data), dtype=dtype).reshape(a.shape)
    return torch.from_numpy(np.array(a.numpy(), copy=True))


def _put(rd: RecordDict, i: int, cid: str, item: Reply, memo: dict) -> None:
    if isinstance(item, Failure):
        rd[f"{i}.meta"] = ConfigRecord({"client": cid, "failure": item.reason})
        return
    meta = {
        "client": cid,
        "type": item.type,
        "config": json.dumps(item.config, default=_json_default, allow_nan=True),
    }
    rd[f"{i}.meta"] = ConfigRecord(meta)
    arrays = {}
    for k, v in item.tensors.items():  # a tensor several messages share is encoded once
        if id(v) not in memo:
            memo[id(v)] = (v, encode_tensor(v))
        arrays[k] = memo[id(v)][1]
    rd[f"{i}.tensors"] = ArrayRecord(arrays)
    blobs = {}
    for k, chunks in item.blobs.items():
        if not all(isinstance(c, bytes) for c in chunks):
            raise CodecError(f"blob {k!r} of a {item.type!r} message is not a list of bytes")
        blobs[k] = list(chunks)
    rd[f"{i}.blobs"] = ConfigRecord(blobs)


def encode_batch(items: list[tuple[str, Reply]]) -> RecordDict:
    """``[(client id, Message or Failure), ...]`` as one RecordDict."""
    rd = RecordDict({BATCH: ConfigRecord({"version": VERSION, "size": len(items)})})
    memo: dict = {}
    for i, (cid, item) in enumerate(items):
        _put(rd, i, cid, item, memo)
    return rd


def decode_batch(rd: RecordDict, shared: bool = False) -> list[tuple[str, Reply]]:
    """The ``(client id, Message or Failure)`` items of an :func:`encode_batch` record.

    With ``shared`` (a node reading the server's batch) Arrays that hold the same bytes
    object (Flower inflates identical content once) become one tensor, read-only to the
    handler as in-process: the round's weights are in memory once, not once per client.
    Replies are decoded into tensors of their own (the server may fold them in place)."""
    memo: dict[int, tuple[bytes, torch.Tensor]] = {}

    def tensor(a: Array) -> torch.Tensor:
        if not shared or not a.data:
            return decode_tensor(a)
        if id(a.data) not in memo:
            memo[id(a.data)] = (a.data, decode_tensor(a))
        return memo[id(a.data)][1]

    head = rd.get(BATCH)
    if not isinstance(head, ConfigRecord) or head.get("version") != VERSION:
        raise CodecError(f"not a FedGPT batch (version {VERSION}) record")
    out: list[tuple[str, Reply]] = []
    for i in range(int(head["size"])):
        meta = rd.get(f"{i}.meta")
        if not isinstance(meta, ConfigRecord) or not isinstance(meta.get("client"), str):
            raise CodecError(f"batch item {i} has no metadata")
        cid = str(meta["client"])
        if "failure" in meta:
            out.append((cid, Failure(str(meta["failure"]))))
            continue
        tensors = rd.get(f"{i}.tensors")
        blobs = rd.get(f"{i}.blobs")
        if not isinstance(tensors, ArrayRecord) or not isinstance(blobs, ConfigRecord):
            raise CodecError(f"batch item {i} ({cid}) lacks its tensors or blobs")
        try:
            config = json.loads(str(meta["config"]))
        except (KeyError, ValueError, RecursionError) as exc:  # + huge ints, deep nesting
            raise CodecError(f"batch item {i} ({cid}): bad config JSON ({exc})") from None
        out.append(
            (
                cid,
                Message(
                    str(meta["type"]),
                    config,
                    {k: tensor(a) for k, a in tensors.items()},
                    {k: list(v) for k, v in blobs.items()},
                ),
            )
        )
    return out


def roundtrip(items: list[tuple[str, Reply]]) -> list[tuple[str, Reply]]:
    """Encode, serialise to bytes as Flower does on the wire, and decode (for tests)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    rd = encode_batch(items)
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(rd).items()}
    return decode_batch(inflate_object_from_contents(rd.object_id, contents))
