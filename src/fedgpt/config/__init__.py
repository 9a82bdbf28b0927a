"""Typed, validated run configuration."""

from fedgpt.config.load import (
    apply_overrides,
    config_hash,
    load_config,
    read_toml,
    to_dict,
    to_toml,
    validate,
)
from fedgpt.config.paths import check_paths
from fedgpt.config.schema import (
    AttackConfig,
    BaselineConfig,
    ClientConfig,
    DataConfig,
    FederationConfig,
    LoraConfig,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    RuntimeConfig,
)

__all__ = [
    "check_paths",
    "AttackConfig",
    "BaselineConfig",
    "ClientConfig",
    "DataConfig",
    "FederationConfig",
    "LoraConfig",
    "ModelConfig",
    "PrivacyConfig",
    "RunConfig",
    "RuntimeConfig",
    "apply_overrides",
    "config_hash",
    "load_config",
    "read_toml",
    "to_dict",
    "to_toml",
    "validate",
]
