"""Building the one :class:`Settings` a process runs with, failing with a message fit for its log."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from config.errors import ConfigurationError, describe_errors
from config.settings import Settings


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and ``overrides``); ConfigurationError naming what is wrong, no values."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(describe_errors(exc)) from None
    except SettingsError as exc:  # a variable that is not the JSON it should be; pydantic-settings quotes no value
        raise ConfigurationError(str(exc)) from None


def settings_or_exit() -> Settings:
    """For a command's start: the settings, or exit with ``configuration error: ...`` (status 1)."""
    try:
        return load_settings()
    except ConfigurationError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
