"""How messages travel: the runtime seam and the in-process runtime."""

from fedgpt.messages import Failure, Message, Reply, Runtime
from fedgpt.runtime.inprocess import InProcessRuntime

__all__ = ["Failure", "InProcessRuntime", "Message", "Reply", "Runtime"]
