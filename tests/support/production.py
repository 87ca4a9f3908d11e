"""Secrets that production mode accepts, for tests that build production settings."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

# Every secret production refuses to run with the development default (config.settings), set to a real value.
PRODUCTION_SECRETS: dict[str, Any] = {
    "certificate_code_secret": SecretStr("a-real-certificate-code-secret-0123456789"),
    "message_id_secret": SecretStr("a-real-message-id-secret-0123456789abcdef"),
    "callback_url_secret": SecretStr("a-real-callback-url-secret-0123456789abcd"),
    "unsubscribe_secret": SecretStr("a-real-unsubscribe-secret-0123456789abcdef"),
}
