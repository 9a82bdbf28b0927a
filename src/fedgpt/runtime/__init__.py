"""How messages travel: the runtime seam and the in-process runtime.

The names are imported on first use, so a light module below this package (the Flower
ClientApp's entry point) does not pull in PyTorch.
"""

__all__ = ["Failure", "InProcessRuntime", "Message", "Reply", "Runtime"]


def __getattr__(name: str):
    if name == "InProcessRuntime":
        from fedgpt.runtime.inprocess import InProcessRuntime

        return InProcessRuntime
    if name in __all__:
        import fedgpt.messages

        return getattr(fedgpt.messages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
