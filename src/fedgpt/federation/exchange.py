"""One message exchange of a round, as the server sees it: send, collect every arrival,
hash what arrived (for the ledger), refuse what cannot be decoded, drop replies from
clients that were not addressed and refuse duplicates (which of two replies is genuine
is unknown). Byte counts accumulate for the round's metrics."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

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

    def stream(
        self, msgs: Mapping[str, Message], hash_type: str | None = None
    ) -> Iterator[tuple[str, Reply, bool]]:
        """Send ``msgs`` and yield ``(client, reply, again)`` as replies arrive: each
        addressed client's first reply (a Failure if it cannot be decoded) with ``again``
        False; a later reply from the same sender with ``again`` True (the consumer takes
        back what it did with the first: which of the two is genuine is unknown); at the
        end, ``Failure("no reply")`` for each client that never answered. A reply is
        hashed on arrival and not kept: the consumer folds it and lets it go, so a round
        holds one update at a time (:mod:`fedgpt.aggregation.stream`).

        ``counts`` afterwards: the number of replies from each sender."""
        self.counts: Counter[str] = Counter()
        source = getattr(self.runtime, "stream", None)
        t0 = time.perf_counter()
        arrivals = source(msgs) if source is not None else _replayed(self.runtime, msgs)
        self.bytes_down += sum(m.nbytes for m in msgs.values())
        try:
            for cid, r in arrivals:
                self.seconds += time.perf_counter() - t0
                got = self._arrive(msgs, cid, r, hash_type)
                del r  # hold no reply while the next client works
                if got is not None:
                    yield cid, got, self.counts[cid] > 1
                    del got
                t0 = time.perf_counter()
        finally:
            close = getattr(arrivals, "close", None)
            if close is not None:
                close()
        self.seconds += time.perf_counter() - t0
        for cid in msgs:
            if not self.counts[cid]:
                yield cid, Failure("no reply"), False

    def _arrive(self, msgs, cid: str, r: Reply, hash_type: str | None) -> Reply | None:
        if self.on_reply:
            self.on_reply(cid, r)
        self.counts[cid] += 1
        if isinstance(r, Message):
            self.bytes_up += _nbytes(r)
            if r.type == hash_type:
                self.hashes[cid] = payload_hash(r)
        if cid not in msgs:
            if self.counts[cid] == 1:
                self.drop(cid, "reply from a client not addressed")
            return None
        why = undecodable(r)
        return Failure(why) if why is not None else r


def _replayed(runtime: Runtime, msgs: Mapping[str, Message]) -> Iterator[tuple[str, Reply]]:
    """Arrivals from a runtime that only answers a whole exchange at once, in the order of
    the messages (so a sum folds them in the order an in-process run does: the same bits),
    each sender's replies together, senders not addressed last."""
    arrivals: list[tuple[str, Reply]] = []
    replies = runtime.send_and_receive(msgs, on_reply=lambda c, r: arrivals.append((c, r)))
    seen = {c for c, _ in arrivals}
    arrivals += [(c, r) for c, r in replies.items() if c not in seen]
    order = {c: i for i, c in enumerate(msgs)}
    yield from sorted(arrivals, key=lambda a: order.get(a[0], len(order)))


def _nbytes(m: Message) -> int:
    try:
        return m.nbytes
    except (AttributeError, TypeError):
        return 0
