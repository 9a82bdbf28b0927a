"""TOML in, one frozen :class:`RunConfig` out; and back to (documented) TOML.

Every problem becomes a one-line :class:`~fedgpt.errors.ConfigError` naming the file or
dotted key and what was expected.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from fedgpt.config.schema import RunConfig
from fedgpt.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "config"
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        return f"unknown config key '{key}'{_did_you_mean(err['loc'])}"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")  # our validators name their keys
    return f"config key '{key}': {err['msg'].lower()}, got {got!r}"


def _did_you_mean(loc) -> str:
    """'; did you mean 'x'?' for the closest key of the same section, or ''."""
    import difflib

    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""


def validate(data: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts, or raise one-line ``ConfigError``."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as TOML, else taken as strings)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected dotted.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set '{item}': expected dotted.key=value")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(value.strip())
    return data


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file '{p}': invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{p}': expected UTF-8 text") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    data = read_toml(path) if path else {}
    return validate(apply_overrides(data, list(overrides or [])))


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def to_toml(cfg: RunConfig, comments: bool = False) -> str:
    """The configuration as TOML; with ``comments``, each key documented above it."""
    import tomli_w

    if not comments:
        return tomli_w.dumps(to_dict(cfg))
    lines: list[str] = [
        "# FedGPT run configuration. Every key is optional; these are the defaults."
    ]
    _emit(cfg, [], lines)
    return "\n".join(lines) + "\n"


def _emit(section: BaseModel, path: list[str], lines: list[str]) -> None:
    import tomli_w

    subsections = []
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            subsections.append((name, value))
            continue
        if field.description:
            lines.append(f"# {field.description}")
        if isinstance(value, dict):  # an inline table, so it stays in this section
            items = ", ".join(
                f"{tomli_w.dumps({'k': k}).split('=', 1)[1].strip()} = "
                f"{tomli_w.dumps({'v': v}).split('=', 1)[1].strip()}"
                for k, v in value.items()
            )
            lines.append(f"{name} = {{{items}}}" if items else f"{name} = {{}}")
        else:
            lines.append(tomli_w.dumps({name: value}).strip())
    for name, value in (section.__pydantic_extra__ or {}).items():  # a component's own keys
        lines.append(tomli_w.dumps({name: value}).strip())
    for name, value in subsections:
        doc = (type(value).__doc__ or "").strip().splitlines()[0]
        lines.append("")
        lines.append(f"[{'.'.join([*path, name])}]")
        lines.append(f"# {doc}")
        _emit(value, [*path, name], lines)


def config_hash(cfg: RunConfig) -> str:
    """SHA-256 of the canonical TOML of the configuration."""
    return hashlib.sha256(to_toml(cfg).encode()).hexdigest()
