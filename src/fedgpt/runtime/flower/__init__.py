"""FedGPT over Flower (``pip install "fedgpt[flower]"``, flwr 1.42): a second runtime.

* :mod:`~fedgpt.runtime.flower.codec`: FedGPT messages <-> Flower records, bit-exact;
* :mod:`~fedgpt.runtime.flower.runtime`: :class:`FlowerRuntime`, the runtime seam over a
  Flower ``Grid``;
* :mod:`~fedgpt.runtime.flower.server_app` / :mod:`~fedgpt.runtime.flower.client_app`:
  the Flower ServerApp and ClientApp (``app`` in each);
* :mod:`~fedgpt.runtime.flower.app_project`: the Flower App project ``flwr run`` takes
  (``src/fedgpt/runtime/flower/app`` or ``python -m fedgpt.runtime.flower app DIR``).

See ``docs/deployment.md`` for a deployment with TLS and SuperNode authentication.
"""

from __future__ import annotations

__all__ = ["FlowerRuntime"]


def __getattr__(name: str):
    if name == "FlowerRuntime":
        from fedgpt.runtime.flower.runtime import FlowerRuntime

        return FlowerRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
