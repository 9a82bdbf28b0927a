"""The FedGPT Flower App project: the folder ``flwr run`` takes.

The repository holds it as ``src/fedgpt/runtime/flower/app/``; an installed FedGPT (a
wheel carries no such folder) writes it with ``python -m fedgpt.runtime.flower app DIR``.
Both hold exactly :data:`PYPROJECT`.
"""

from __future__ import annotations

from pathlib import Path

PYPROJECT = """\
# The FedGPT Flower App: `flwr run <this folder> <connection>`.
# Every machine (SuperLink and SuperNodes) needs FedGPT installed: pip install "fedgpt[flower]".
# Start the SuperLink with --disable-runtime-dependency-installation (nothing is installed
# at run time; the components below are imported from the installed fedgpt package).

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedgpt-flower"
version = "0.1.0"
description = "FedGPT: privacy-preserving federated fine-tuning of language models, on Flower"
license = "Apache-2.0"
dependencies = ["flwr>=1.42,<1.43", "fedgpt[flower]"]

[tool.flwr.app]
publisher = "fedgpt"

[tool.flwr.app.components]
serverapp = "fedgpt.runtime.flower.server_app:app"
clientapp = "fedgpt.runtime.flower.client_app:app"

[tool.flwr.app.config]
# a FedGPT TOML file on the server machine ("" = FedGPT's defaults)
config-path = ""
# FedGPT --set items separated by ";", e.g. "federation.rounds=2; data.plays=['lear']"
overrides = ""
# wait for this many SuperNodes before starting, at most node-wait seconds
min-nodes = 1
node-wait = 120.0
# seconds one exchange (send to every node, collect every reply) may take
timeout = 600.0
# a run folder on the server machine to continue from its last checkpoint (after the
# server was stopped); its config.toml is used, plus overrides ("" = a new run)
resume = ""
"""


def write_app(out: str | Path) -> Path:
    """Write the Flower App project (its ``pyproject.toml``) into folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pyproject.toml").write_text(PYPROJECT)
    return out
