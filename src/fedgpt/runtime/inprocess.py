"""The in-process runtime (default): client handlers are called directly, one after the
other, in this process. No serialisation; byte counts come from the payload sizes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

from fedgpt.messages import Failure, Message, Reply

log = logging.getLogger(__name__)

Handler = Callable[[str, Message], Message]
# network tampering for tests: (client, message, reply) -> what arrives, as (sender, reply)
Tamper = Callable[[str, Message, Reply], list[tuple[str, Reply]]]


class InProcessRuntime:
    """Runs ``handler(client_id, message)`` for each addressed client.

    An exception in a handler becomes a :class:`Failure` for that client only; the others
    still run. Fault injection (tests, benchmarks, ``[runtime]`` settings):

    * ``drop(client_id, message_type)``: the addressed client vanishes for that message:
      it is not called and a :class:`Failure` comes back;
    * ``faults`` (a :class:`~fedgpt.runtime.faults.FaultInjector`): crashes, vanishing
      SecAgg clients, and stragglers whose simulated reply time exceeds the deadline
      (``timeout`` per call, else the runtime's ``timeout``; ``None`` or 0 = none);
    * ``tamper``: rewrites what arrives for each reply (forged sender, duplicate, replay).

    ``on_reply`` is called once for every reply that arrives, in order of arrival, so a
    server can see duplicates and senders it did not address; the returned dict keeps
    the last reply of each sender.
    """

    def __init__(
        self,
        handler: Handler,
        drop: Callable[[str, str], bool] | None = None,
        faults=None,
        timeout: float | None = None,
        tamper: Tamper | None = None,
    ):
        self.handler = handler
        self.drop = drop
        self.faults = faults
        self.timeout = timeout
        self.tamper = tamper

    def send_and_receive(
        self,
        messages: Mapping[str, Message],
        timeout: float | None = None,
        on_reply: Callable[[str, Reply], None] | None = None,
    ) -> dict[str, Reply]:
        replies: dict[str, Reply] = {}
        for sender, r in self.stream(messages, timeout):
            replies[sender] = r
            if on_reply is not None:
                on_reply(sender, r)
        return replies

    def stream(
        self, messages: Mapping[str, Message], timeout: float | None = None
    ) -> Iterator[tuple[str, Reply]]:
        """Each reply as it is produced, as ``(sender, reply)``: the server can fold one
        update and let it go before the next client trains."""
        deadline = timeout if timeout is not None else self.timeout
        for cid, msg in messages.items():
            reply = self.answer(cid, msg, deadline)
            yield from self.tamper(cid, msg, reply) if self.tamper is not None else [(cid, reply)]
            del reply

    def answer(self, cid: str, msg: Message, deadline: float | None) -> Reply:
        """``cid``'s reply to ``msg``, with the configured faults applied."""
        early = self.before(cid, msg)
        return early if early is not None else self.after(cid, msg, self.call(cid, msg), deadline)

    def before(self, cid: str, msg: Message) -> Failure | None:
        """The injected failure that replaces calling the client, if any."""
        if self.drop is not None and self.drop(cid, msg.type):
            return Failure("client dropped out (fault injection)")
        if self.faults is not None:
            return self.faults.before(cid, msg)
        return None

    def after(self, cid: str, msg: Message, reply: Reply, deadline: float | None) -> Reply:
        """``reply``, or a Failure when the simulated straggler misses the deadline."""
        late = self.faults.delay(cid, msg) if self.faults is not None else 0.0
        if deadline and late > deadline:
            return Failure(
                f"no reply within the round deadline of {deadline:g} s "
                f"(straggler, {late:g} s, fault injection)"
            )
        return reply

    def call(self, cid: str, msg: Message) -> Reply:
        try:
            return self.handler(cid, msg)
        except Exception as exc:  # a crashing client must not stop the round
            log.warning("client %s failed on %s: %r", cid, msg.type, exc)
            return Failure(f"client raised {type(exc).__name__}: {exc}")
