"""Settings of one-click unsubscribe and the suppression lists (docs/suppression.md). A part of
:class:`config.settings.Settings` (same ``OFFLOAD_`` variables)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from config.base import DEV_UNSUBSCRIBE_SECRET, SettingsBase


class SuppressionSettings(SettingsBase):
    # Unsubscribe tokens are HMAC(company, learner, list) under this secret: stateless, unguessable. Every worker
    # and API process needs the same value; production refuses the development default (Settings). Changing it makes the
    # links in mail already sent invalid.
    unsubscribe_secret: SecretStr = SecretStr(DEV_UNSUBSCRIBE_SECRET)
    unsubscribe_base_url: str | None = None  # default: public_base_url; bulk mail links {this}/u/{token}
    unsubscribe_mailto: str | None = None  # e.g. unsubscribe@moodle.example.org: the mailto: of List-Unsubscribe
    # Email jobs that name no category are bulk unless their template is one of these (certificate jobs and
    # their notification mail are always transactional).
    transactional_templates: list[str] = Field(default_factory=lambda: [
        "certificate_ready", "password_reset", "password_changed", "account_confirmation", "email_change"])
    # Where Moodle hears about unsubscribes: company id (or "*" for every company) -> its callback endpoint,
    # signed with the company's callback key (OFFLOAD_CALLBACK_KEYS).
    unsubscribe_callback_urls: dict[str, str] = Field(default_factory=dict)

    def unsubscribe_key(self) -> bytes:
        return self.unsubscribe_secret.get_secret_value().encode()

    def unsubscribe_callback_url(self, company_id: int) -> str | None:
        return self.unsubscribe_callback_urls.get(str(company_id)) or self.unsubscribe_callback_urls.get("*")
