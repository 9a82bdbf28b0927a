"""The in-process runtime (default): client handlers are called directly, one after the
other, in this process. No serialisation; byte counts come from the payload sizes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from fedgpt.runtime.messages import Failure, Message, Reply

log = logging.getLogger(__name__)

Handler = Callable[[str, Message], Message]


class InProcessRuntime:
    """Runs ``handler(client_id, message)`` for each addressed client.

    An exception in a handler becomes a :class:`Failure` for that client only; the others
    still run. ``drop(client_id, message_type)`` (fault injection for tests and
    benchmarks) makes the addressed client vanish for that message: it is not called and
    a :class:`Failure` comes back.
    """

    def __init__(self, handler: Handler, drop: Callable[[str, str], bool] | None = None):
        self.handler = handler
        self.drop = drop

    def send_and_receive(
        self,
        messages: Mapping[str, Message],
        timeout: float | None = None,
        on_reply: Callable[[str, Reply], None] | None = None,
    ) -> dict[str, Reply]:
        replies: dict[str, Reply] = {}
        for cid, msg in messages.items():
            if self.drop is not None and self.drop(cid, msg.type):
                replies[cid] = Failure("client dropped out (fault injection)")
                if on_reply is not None:
                    on_reply(cid, replies[cid])
                continue
            try:
                reply: Reply = self.handler(cid, msg)
            except Exception as exc:  # a crashing client must not stop the round
                log.warning("client %s failed on %s: %r", cid, msg.type, exc)
                reply = Failure(f"client raised {type(exc).__name__}: {exc}")
            replies[cid] = reply
            if on_reply is not None:
                on_reply(cid, reply)
        return replies

    def close(self) -> None:
        pass
