"""Messages between server and clients, shaped like Flower's message API, and the
runtime seam that carries them.

A :class:`Message` has a type (``"train"``, ``"evaluate"``, ...), a small JSON-able config
dict, named tensor payloads and named byte payloads (e.g. ciphertexts). A
:class:`Failure` stands in for a reply that never came or could not be used (the client
crashed, timed out or sent garbage).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class Message:
    type: str
    config: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    blobs: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor and blob payloads (what dominates the wire size)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values()) + sum(
            len(b) for chunks in self.blobs.values() for b in chunks
        )


@dataclass(frozen=True)
class Failure:
    reason: str


Reply = Message | Failure

WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def broadcast(weights: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """The global weights as they go down to the clients (``federation.broadcast_dtype``):
    unchanged in float32, else rounded to nearest in ``dtype`` (half the bytes). The server
    keeps its float32 weights; a client starts from the rounded ones and sends its update
    against them, so the rounding does not accumulate over rounds."""
    wire = WIRE_DTYPES[dtype]
    return weights if weights.dtype == wire else weights.to(wire)


def widened(msg: Message) -> Message:
    """``msg`` with broadcast weights in float32 again (a client computes in float32)."""
    w = msg.tensors.get("weights")
    if w is None or w.dtype == torch.float32 or not w.is_floating_point():
        return msg
    return Message(msg.type, msg.config, {**msg.tensors, "weights": w.float()}, msg.blobs)


class Runtime(Protocol):
    """Carries messages to clients and brings their replies back: the one way the server
    talks to clients.

    ``send_and_receive`` delivers each message to its client and returns one reply per
    client: a :class:`Message` or a :class:`Failure`. ``on_reply`` (optional) is called as
    each reply arrives, for progress display.

    A runtime may also offer ``stream(messages, timeout)``, an iterator of ``(sender,
    reply)`` as replies arrive, so the server can fold each update and let it go
    (streaming aggregation); a runtime whose ``borrowed`` is true reuses an update's
    memory once the next reply is asked for.
    """

    def send_and_receive(
        self,
        messages: Mapping[str, Message],
        timeout: float | None = None,
        on_reply: Callable[[str, Reply], None] | None = None,
    ) -> dict[str, Reply]: ...
