"""The Flower runtime: FedGPT's runtime seam over a Flower ``Grid``.

``send_and_receive`` groups the FedGPT messages by the SuperNode that serves each client,
pushes one Flower message per node (see :mod:`fedgpt.runtime.flower.codec`), polls the
SuperLink for the replies and hands back one :class:`Message` or :class:`Failure` per
client. An error reply, a reply that does not decode, or no reply within ``timeout``
seconds becomes a ``Failure`` for each client of that node; the others are unaffected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from fedgpt.messages import Failure, Message, Reply
from fedgpt.runtime.flower.codec import CodecError, decode_batch, encode_batch

log = logging.getLogger(__name__)

TRAIN_TYPES = ("train", "secagg/train")


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

    def send_and_receive(
        self,
        messages: Mapping[str, Message],
        timeout: float | None = None,
        on_reply: Callable[[str, Reply], None] | None = None,
    ) -> dict[str, Reply]:
        from flwr.app import Message as FlowerMessage

        timeout = self.timeout if timeout is None else timeout
        replies: dict[str, Reply] = {}

        def settle(cid: str, reply: Reply) -> None:
            replies[cid] = reply
            if on_reply is not None:
                on_reply(cid, reply)

        by_node: dict[int, list[tuple[str, Message]]] = {}
        for cid, msg in messages.items():
            node = self.node_of.get(cid)
            if node is None:
                settle(cid, Failure(f"client {cid} is served by no connected SuperNode"))
            else:
                by_node.setdefault(node, []).append((cid, msg))
        if not by_node:
            return replies
        out, order = [], []
        for node, items in by_node.items():
            rounds = {m.config.get("round") for _, m in items}
            group = str(rounds.pop()) if len(rounds) == 1 else ""
            out.append(
                FlowerMessage(
                    encode_batch(items),
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
        pending: dict[str, int] = {}
        for node, mid in zip(order, ids, strict=False):
            if mid:
                pending[mid] = node
            else:
                for cid, _ in by_node[node]:
                    settle(cid, Failure(f"Flower could not push the message to node {node}"))
        end = time.monotonic() + timeout
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                node = pending.pop(reply.metadata.reply_to_message_id, None)
                if node is not None:
                    self._settle_node(node, by_node[node], reply, settle)
            if not pending or time.monotonic() >= end:
                break
            time.sleep(self.poll)
        for node in pending.values():
            for cid, _ in by_node[node]:
                settle(cid, Failure(f"no reply from node {node} within {timeout:g} s"))
        return replies

    @staticmethod
    def _settle_node(node: int, items, reply, settle) -> None:
        if reply.has_error():
            err = reply.error
            for cid, _ in items:
                settle(cid, Failure(f"node {node} error {err.code}: {err.reason}"))
            return
        try:
            got = dict(decode_batch(reply.content))
        except (CodecError, KeyError, TypeError, ValueError) as exc:
            for cid, _ in items:
                settle(cid, Failure(f"node {node} sent an unreadable reply: {exc}"))
            return
        for cid, _ in items:
            settle(cid, got.get(cid, Failure(f"node {node} sent no reply for client {cid}")))
