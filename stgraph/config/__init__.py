"""Declarative experiment configuration (YAML → typed dataclasses)."""
from .load import (ConfigError, apply_overrides, config_from_dict, config_to_dict, load_config, save_config,
                   validate_config)
from .schema import *  # noqa: F401,F403
from .schema import __all__ as _schema_all

__all__ = [
    "ConfigError",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
    "validate_config",
    *_schema_all,
]
