"""How messages travel: the runtime seam and the in-process runtime."""

from fedgpt.runtime.base import Runtime
from fedgpt.runtime.inprocess import InProcessRuntime
from fedgpt.runtime.messages import Failure, Message, Reply

__all__ = ["Failure", "InProcessRuntime", "Message", "Reply", "Runtime"]
