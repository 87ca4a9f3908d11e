"""Settings of the callbacks to Moodle: signing keys, milestones, retries, and the secret that seals callback
URLs. A part of :class:`config.settings.Settings` (same ``OFFLOAD_`` variables)."""

from __future__ import annotations

import json
from functools import lru_cache

from pydantic import Field, SecretStr, ValidationError, model_validator

from config.base import DEV_CALLBACK_URL_SECRET, PLACEHOLDERS, SettingsBase
from config.errors import describe_errors
from config.keys import API_KEY_ID, ApiKey


class CallbackSettings(SettingsBase):
    # Callback signing keys by key id, the same JSON shape as api_keys, e.g. OFFLOAD_CALLBACK_KEYS=
    # '{"moodle-7-cb-2026a": {"secret": "...", "company_id": 7}}'. A job's callbacks are signed with the key the
    # job named (callback_key_id) when it belongs to the job's company, else the company's key listed last (a
    # rotation appends the new key), else a key with company_id null. Held as one secret string so it never
    # shows in a repr and travels to child processes as the JSON it is read from.
    callback_keys: SecretStr = SecretStr("{}")
    # Percent of recipients done at which Moodle hears of progress, between "started" and "completed".
    callback_milestones: list[int] = Field(default_factory=lambda: [25, 50, 75])
    callback_max_age: float = Field(default=24 * 3600, ge=60, le=7 * 24 * 3600)  # then the callback is given up
    callback_retry_base: float = Field(default=15.0, gt=0, le=3600)  # first retry ~ this many seconds later
    callback_retry_max: float = Field(default=3600.0, gt=0, le=24 * 3600)  # backoff ceiling
    callback_timeout: float = Field(default=10.0, gt=0, le=120)  # whole request, connect included
    callback_connect_timeout: float = Field(default=5.0, gt=0, le=60)
    callback_check_interval: float = Field(default=1.0, gt=0, le=60)  # how often due callbacks are looked for
    callback_concurrency: int = Field(default=32, ge=1, le=512)  # callbacks in flight per worker
    # Seals the query string of callback URLs (e.g. Moodle's wstoken) so it never sits in the log or a read model
    # in clear; the API seals, the worker opens. Same value in every API and worker process; production refuses
    # the development default. Rotating it makes the callbacks of jobs still running fail (say so, then rotate).
    callback_url_secret: SecretStr = SecretStr(DEV_CALLBACK_URL_SECRET)

    def callback_key_table(self) -> dict[str, ApiKey]:
        return _parse_callback_keys(self.callback_keys.get_secret_value())

    def callback_key_for(self, company_id: int, requested: str | None = None) -> tuple[str, ApiKey] | None:
        """The key id and key that sign this company's callbacks, or None when none is configured."""
        keys = self.callback_key_table()
        if requested and requested in keys and keys[requested].company_id in (company_id, None):
            return requested, keys[requested]
        own = [(key_id, key) for key_id, key in keys.items() if key.company_id == company_id]
        shared = [(key_id, key) for key_id, key in keys.items() if key.company_id is None]
        chosen = own or shared
        return chosen[-1] if chosen else None

    @model_validator(mode="after")
    def _check_callback_settings(self) -> CallbackSettings:
        try:
            keys = self.callback_key_table()
        except ValueError as exc:
            raise ValueError(f"callback_keys: {exc}") from None
        for key_id, key in keys.items():
            if not API_KEY_ID.fullmatch(key_id):
                raise ValueError(f"callback key id {key_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
            secret = key.secret.get_secret_value()
            if self.environment == "production" and (len(secret) < 32 or secret.strip().lower() in PLACEHOLDERS):
                raise ValueError(f"callback key {key_id!r} needs a real secret of at least 32 characters in production")
        if any(not 0 < m < 100 for m in self.callback_milestones):
            raise ValueError("callback_milestones are percentages strictly between 0 and 100")
        return self



@lru_cache(maxsize=8)
def _parse_callback_keys(raw: str) -> dict[str, ApiKey]:
    try:
        data = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object of key id -> {secret, company_id}")  # noqa: TRY004
    keys = {}
    for key_id, value in data.items():
        try:
            keys[str(key_id)] = ApiKey.model_validate(value)
        except ValidationError as exc:  # the key is named, its secret never shown
            raise ValueError(f"callback key {key_id!r}: {describe_errors(exc)}") from None
    return keys

