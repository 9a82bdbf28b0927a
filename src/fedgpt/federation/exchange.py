"""One message exchange of a round, as the server sees it: send, collect every arrival,
hash what arrived (for the ledger), refuse what cannot be decoded, drop replies from
clients that were not addressed and refuse duplicates (which of two replies is genuine
is unknown). Byte counts accumulate for the round's metrics."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping

from fedgpt.federation.ledger import payload_hash
from fedgpt.federation.validation import undecodable
from fedgpt.messages import Failure, Message, Reply, Runtime

OnReply = Callable[[str, Reply], None]


class Exchange:
    """Exchanges of one round over ``runtime``; ``on_reply`` sees every arrival."""

    def __init__(self, runtime: Runtime, on_reply: OnReply | None = None):
        self.runtime, self.on_reply = runtime, on_reply
        self.hashes: dict[str, str] = {}  # SHA-256 of each update payload, as it arrived
        self.dropped: list[dict[str, str]] = []
        self.bytes_up = self.bytes_down = 0
        self.seconds = 0.0

    def drop(self, cid: str, reason: str) -> None:
        self.dropped.append({"client": cid, "reason": reason})

    def send(self, msgs: Mapping[str, Message], hash_type: str | None = None) -> dict[str, Reply]:
        """Send ``msgs``; returns one usable reply (or Failure) per addressed client.
        Replies of type ``hash_type`` are hashed into ``hashes``."""
        arrivals: list[str] = []

        def record(cid: str, reply: Reply) -> None:
            arrivals.append(cid)
            if self.on_reply:
                self.on_reply(cid, reply)

        t0 = time.perf_counter()
        replies = dict(self.runtime.send_and_receive(msgs, on_reply=record))
        self.seconds += time.perf_counter() - t0
        self.bytes_down += sum(m.nbytes for m in msgs.values())
        for cid, r in replies.items():
            if isinstance(r, Message):
                self.bytes_up += _nbytes(r)
                if r.type == hash_type:
                    self.hashes[cid] = payload_hash(r)
            if (why := undecodable(r)) is not None:
                replies[cid] = Failure(why)
        counts = Counter(arrivals)
        for cid in replies:  # a runtime that does not report every arrival
            counts[cid] = max(counts[cid], 1)
        received: dict[str, Reply] = {}
        for cid, count in counts.items():
            if cid not in msgs:
                self.drop(cid, "reply from a client not addressed")
            elif count > 1:
                received[cid] = Failure(f"duplicate sender: {count} replies to one message")
            elif cid in replies:
                received[cid] = replies[cid]
        return {cid: received.get(cid, Failure("no reply")) for cid in msgs}


def _nbytes(m: Message) -> int:
    try:
        return m.nbytes
    except (AttributeError, TypeError):
        return 0
