"""The runtime seam: the one way the federation loop talks to clients."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from fedgpt.runtime.messages import Message, Reply


class Runtime(Protocol):
    """Carries messages to clients and brings their replies back.

    ``send_and_receive`` delivers each message to its client and returns one reply per
    client: a :class:`Message` or a :class:`Failure`. ``on_reply`` (optional) is called as
    each reply arrives, for progress display.
    """

    def send_and_receive(
        self,
        messages: Mapping[str, Message],
        timeout: float | None = None,
        on_reply: Callable[[str, Reply], None] | None = None,
    ) -> dict[str, Reply]: ...

    def close(self) -> None: ...
