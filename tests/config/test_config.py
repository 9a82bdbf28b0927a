"""Configuration: defaults round-trip, overrides, errors name the key, docs stay in sync."""

import re
from pathlib import Path

import pytest
import tomllib

from fedgpt.config import RunConfig, config_hash, load_config, to_toml, validate
from fedgpt.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_documented_defaults_round_trip():
    text = to_toml(RunConfig(), comments=True)
    assert validate(tomllib.loads(text)) == RunConfig()
    assert validate(tomllib.loads(to_toml(RunConfig()))) == RunConfig()


def test_every_option_is_documented_and_docs_match():
    text = to_toml(RunConfig(), comments=True)
    assert text in DOCS.read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"undocumented key: {line}"


def test_every_aggregator_setting_is_documented():
    from fedgpt.build import aggregator_reference

    assert aggregator_reference() in DOCS.read_text()


def test_aggregator_settings_are_validated_beside_the_rule():
    from fedgpt.build import load_run_config

    cfg = load_run_config(None, ['federation.aggregator={kind = "krum", f = 2}'])
    assert cfg.federation.aggregator.kind == "krum" and cfg.federation.aggregator.params == {"f": 2}
    assert (
        load_config(None, ['federation.aggregator="median"']).federation.aggregator.kind == "median"
    )
    for bad, msg in [
        ('{kind = "krum", f = -1}', "federation.aggregator.f"),
        ('{kind = "krum", trim = 0.2}', "unknown config key 'federation.aggregator.trim'"),
        ('"no_such_rule"', "unknown aggregator 'no_such_rule'"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            load_run_config(None, [f"federation.aggregator={bad}"])


def test_overrides_parse_toml_values_and_nest(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('name = "x"\n[client]\nlr = 0.5\n')
    cfg = load_config(p, ["client.lr=0.25", 'data.plays=["lear"]', "model.lora.enabled=true"])
    assert (cfg.name, cfg.client.lr, cfg.data.plays, cfg.model.lora.enabled) == (
        "x",
        0.25,
        ["lear"],
        True,
    )
    assert config_hash(cfg) != config_hash(RunConfig())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("client.momentum=1.0", "config key 'client.momentum'"),
        ("seed=-1", "config key 'seed'"),
        ("model.lora.r=0", "config key 'model.lora.r'"),
        ("client=3", "config key 'client'"),
        ("client.lr.x=1", "config key 'client.lr'"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_frozen():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        RunConfig().client.lr = 1.0  # type: ignore[misc]
