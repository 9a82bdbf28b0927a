"""The Flower App's run configuration (``[tool.flwr.app.config]`` and ``flwr run
--run-config``) and the FedGPT configuration it names.

Keys:

* ``config-path``: a FedGPT TOML file on the server machine ("" = FedGPT's defaults);
* ``overrides``: FedGPT ``--set`` items, ``dotted.key=value`` separated by ``;``
  (e.g. ``"federation.rounds=2; data.plays=['lear']"``);
* ``min-nodes``: wait until this many SuperNodes are connected before starting;
* ``node-wait``: how long to wait for them, seconds;
* ``timeout``: how long one exchange (send to every node, collect every reply) may take;
* ``resume``: a run folder on the server machine to continue from its last checkpoint
  (its ``config.toml`` plus ``overrides``); "" = a new run.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedgpt.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULTS: dict[str, Any] = {
    "config-path": "",
    "overrides": "",
    "min-nodes": 1,
    "node-wait": 120.0,
    "timeout": 600.0,
    "resume": "",
}


def split_overrides(text: str) -> list[str]:
    """``a=1; b=[1, 2]; c='x;y'`` -> ``["a=1", "b=[1, 2]", "c='x;y'"]`` (a ``;`` inside
    quotes or brackets does not split)."""
    items, cur, quote, depth = [], [], "", 0
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == ";" and depth == 0:
            items.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    items.append("".join(cur))
    return [i.strip() for i in items if i.strip()]


def config_from_toml(text: str):
    """A :class:`~fedgpt.config.RunConfig` from TOML text (as ``to_toml`` writes it)."""
    from fedgpt.config import validate

    try:
        return validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"FedGPT configuration sent by the server: invalid TOML: {exc}") from None


@dataclass(frozen=True)
class FlowerSettings:
    config_path: str = ""
    overrides: tuple[str, ...] = ()
    min_nodes: int = 1
    node_wait: float = 120.0
    timeout: float = 600.0
    resume: str = ""

    @classmethod
    def from_run_config(cls, rc: Mapping[str, Any]) -> FlowerSettings:
        """Read (and check) the Flower run configuration."""
        unknown = sorted(set(rc) - set(DEFAULTS))
        if unknown:
            raise ConfigError(
                f"unknown Flower run-config key(s) {unknown}; known: {list(DEFAULTS)}"
            )
        v = {**DEFAULTS, **dict(rc)}
        try:
            s = cls(
                config_path=str(v["config-path"]),
                overrides=tuple(split_overrides(str(v["overrides"]))),
                min_nodes=int(v["min-nodes"]),
                node_wait=float(v["node-wait"]),
                timeout=float(v["timeout"]),
                resume=str(v["resume"]),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Flower run-config: {exc}") from None
        if s.min_nodes < 1 or s.node_wait < 0 or s.timeout <= 0:
            raise ConfigError(
                "Flower run-config: min-nodes must be >= 1, node-wait >= 0 and timeout > 0"
            )
        return s

    def fedgpt_config(self):
        """The FedGPT run configuration: ``config-path`` (or, resuming, the run folder's
        ``config.toml``) plus ``overrides``."""
        from fedgpt.config import load_config

        if self.resume:
            from pathlib import Path

            from fedgpt.runner import resume_config

            return resume_config(Path(self.resume), list(self.overrides))
        return load_config(self.config_path or None, list(self.overrides))
