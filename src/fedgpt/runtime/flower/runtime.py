"""The Flower runtime: FedGPT's runtime seam over a Flower ``Grid``.

``send_and_receive`` groups the FedGPT messages by the SuperNode that serves each client,
pushes one Flower message per node (see :mod:`fedgpt.runtime.flower.codec`), polls the
SuperLink for the replies and hands back one :class:`Message` or :class:`Failure` per
client. An error reply, a reply that does not decode, or no reply within ``timeout``
seconds becomes a ``Failure`` for each client of that node; the others are unaffected.

Messages that need no answer before the run goes on (the run's setup after the hello, the
ledger receipts after a round) are *carried* (:meth:`FlowerRuntime.carry`): they wait and
travel at the head of the next batch to their node, so a plain round costs one exchange;
:meth:`FlowerRuntime.flush` sends what is still waiting at the end of the run. A node that
does not answer keeps its carried messages for the next exchange.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from fedgpt.messages import Failure, Message, Reply
from fedgpt.runtime.flower.codec import CodecError, decode_batch, encode_batch

log = logging.getLogger(__name__)

TRAIN_TYPES = ("train", "secagg/train")
OnReply = Callable[[str, Reply], None] | None


def flower_type(types: set[str]) -> str:
    """The Flower message type for a batch of FedGPT message types: ``train`` or
    ``evaluate`` when all are, else ``query`` (Flower accepts only these categories)."""
    if types and all(t in TRAIN_TYPES for t in types):
        return "train"
    if types == {"evaluate"}:
        return "evaluate"
    return "query"


class FlowerRuntime:
    """Carries FedGPT messages over Flower.

    ``grid`` is the ``flwr.serverapp.Grid`` the ServerApp's ``main`` receives;
    ``node_of`` maps each client id to the node id of the SuperNode that serves it;
    ``timeout`` (seconds) bounds each exchange; ``poll`` is the pause between pulls.
    """

    def __init__(
        self,
        grid,
        node_of: Mapping[str, int],
        timeout: float = 600.0,
        poll: float = 0.1,
    ):
        self.grid = grid
        self.node_of = dict(node_of)
        self.timeout = timeout
        self.poll = poll
        self.exchanges = 0  # Flower messages sent (one per node per exchange)
        self.round_trips = 0  # exchanges: pushes answered before the run goes on
        self.carried: dict[int, list[tuple[str, Message, OnReply]]] = {}

    def carry(self, messages: Mapping[str, Message], on_reply: OnReply = None) -> None:
        """Send ``messages`` with the next exchange that reaches each one's node (keys: a
        client id, or ``@node:N`` for node N itself); ``on_reply(key, reply)`` is called
        when its reply comes back."""
        for key, msg in messages.items():
            node = int(key[6:]) if key.startswith("@node:") else self.node_of.get(key)
            if node is None:
                if on_reply is not None:
                    on_reply(key, Failure(f"client {key} is served by no connected SuperNode"))
                continue
            self.carried.setdefault(node, []).append((key, msg, on_reply))

    def flush(self, timeout: float | None = None) -> None:
        """Send every carried message still waiting, in one exchange."""
        if any(self.carried.values()):
            self.send_and_receive({}, timeout, nodes=sorted(self.carried))

    def send_and_receive(
        self,
        messages: Mapping[str, Message],
        timeout: float | None = None,
        on_reply: OnReply = None,
        nodes: list[int] = (),
    ) -> dict[str, Reply]:
        """One exchange: ``messages`` (and what is carried for their nodes, or for
        ``nodes``) out, one reply per message back."""
        timeout = self.timeout if timeout is None else timeout
        replies: dict[str, Reply] = {}

        def settle(cid: str, reply: Reply) -> None:
            replies[cid] = reply
            if on_reply is not None:
                on_reply(cid, reply)

        by_node: dict[int, list[tuple[str, Message]]] = {n: [] for n in nodes}
        for cid, msg in messages.items():
            node = self.node_of.get(cid)
            if node is None:
                settle(cid, Failure(f"client {cid} is served by no connected SuperNode"))
            else:
                by_node.setdefault(node, []).append((cid, msg))
        if not by_node:
            return replies
        carried = {n: self.carried.pop(n, []) for n in by_node}
        pending = self._push(by_node, carried, timeout, settle)
        end = time.monotonic() + timeout
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                node = pending.pop(reply.metadata.reply_to_message_id, None)
                if node is not None:
                    self._settle_node(node, by_node[node], carried[node], reply, settle)
            if not pending or time.monotonic() >= end:
                break
            time.sleep(self.poll)
        for node in pending.values():
            why = f"no reply from node {node} within {timeout:g} s"
            self._lost(node, by_node[node], carried[node], why, settle)
        return replies

    def _push(self, by_node, carried, timeout: float, settle) -> dict[str, int]:
        """Push one Flower message per node (its carried messages first); {message id:
        node} of those Flower took."""
        from flwr.app import Message as FlowerMessage

        out, order = [], []
        for node, items in by_node.items():
            batch = [(k, m) for k, m, _ in carried[node]] + items
            rounds = {m.config.get("round") for _, m in items}
            group = str(rounds.pop()) if len(rounds) == 1 else ""
            out.append(
                FlowerMessage(
                    encode_batch(batch),
                    dst_node_id=node,
                    message_type=flower_type({m.type for _, m in items}),
                    ttl=timeout + 30.0,
                    group_id=group,
                )
            )
            order.append(node)
        ids = list(self.grid.push_messages(out))
        ids += [None] * (len(out) - len(ids))  # Flower returns [] when a push is refused
        self.exchanges += len(out)
        self.round_trips += 1
        pending: dict[str, int] = {}
        for node, mid in zip(order, ids, strict=False):
            if mid:
                pending[mid] = node
            else:
                why = f"Flower could not push the message to node {node}"
                self._lost(node, by_node[node], carried[node], why, settle)
        return pending

    def _lost(self, node: int, items, carried, why: str, settle) -> None:
        """Node ``node`` did not answer: its clients fail, its carried messages wait for
        the next exchange."""
        if carried:
            self.carried[node] = carried + self.carried.get(node, [])
        for cid, _ in items:
            settle(cid, Failure(why))

    def _settle_node(self, node: int, items, carried, reply, settle) -> None:
        if reply.has_error():
            err = reply.error
            self._lost(node, items, carried, f"node {node} error {err.code}: {err.reason}", settle)
            return
        try:
            got = decode_batch(reply.content)
        except (CodecError, KeyError, TypeError, ValueError) as exc:
            self._lost(node, items, carried, f"node {node} sent an unreadable reply: {exc}", settle)
            return
        sent = [k for k, _, _ in carried] + [cid for cid, _ in items]
        if [k for k, _ in got] != sent:  # one reply per item, in order
            why = f"node {node} sent replies that do not match its batch"
            self._lost(node, items, carried, why, settle)
            return
        for (key, _, callback), (_, r) in zip(carried, got, strict=False):
            if callback is not None:
                callback(key, r)
        for (cid, _), (_, r) in zip(items, got[len(carried) :], strict=True):
            settle(cid, r)
