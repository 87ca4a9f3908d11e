"""What every part of the settings shares: the deployment's environment, and the secrets production refuses."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings

DEV_CODE_SECRET = "development-only-certificate-code-secret"
DEV_MESSAGE_ID_SECRET = "development-only-message-id-secret"
DEV_CALLBACK_URL_SECRET = "development-only-callback-url-secret"
DEV_UNSUBSCRIBE_SECRET = "development-only-unsubscribe-secret"
PLACEHOLDERS = {"", "changeme", "change-me", "secret", "dev-secret", DEV_CODE_SECRET, DEV_MESSAGE_ID_SECRET,
                DEV_CALLBACK_URL_SECRET, DEV_UNSUBSCRIBE_SECRET}


class SettingsBase(BaseSettings):
    """Base of the parts :class:`config.settings.Settings` is made of. Only ``Settings`` is built; its
    ``model_config`` (the ``OFFLOAD_`` prefix) applies to the fields of every part."""

    environment: Literal["development", "test", "production"] = "development"
