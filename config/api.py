"""Settings of the HTTP side: Moodle's signing keys and request limits, provider webhooks, the monitoring UI and
/metrics. A part of :class:`config.settings.Settings` (same ``OFFLOAD_`` variables)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from pydantic import Field, SecretStr, model_validator

from config.base import PLACEHOLDERS, SettingsBase
from config.keys import API_KEY_ID, ApiKey


class ApiSettings(SettingsBase):
    # === API: the Moodle-facing side ==============================================================
    # Per-company signing keys by key id, e.g. OFFLOAD_API_KEYS='{"moodle-7-2026a": {"secret": "...",
    # "company_id": 7}, "ops": {"secret": "...", "company_id": null}}'; company_id null is an admin key.
    # Two keys per company may be valid at once, so a key is rotated without downtime.
    api_keys: dict[str, ApiKey] = Field(default_factory=dict)
    api_timestamp_window: float = Field(default=300, ge=5, le=3600)  # seconds either side of now
    # Default = the job-requests topic's max.message.bytes (eventlog.topics.MAX_MESSAGE_BYTES, 32 MiB): a body
    # the API admits always fits in one Kafka record. A 100,000-recipient job is ~10-20 MB of JSON.
    api_max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024, le=32 * 1024 * 1024)
    # Callback URLs resolving to loopback/private/link-local addresses are refused unless this is set.
    api_allow_private_callbacks: bool = False
    api_db_pool_size: int = Field(default=10, ge=1, le=100)
    # A job's template_data is printed into every message; more than this (JSON bytes) is refused at the API and
    # by the worker (JobRejected), so one request cannot make the worker write gigabytes.
    template_data_max_bytes: int = Field(default=64 * 1024, ge=1024, le=4 * 1024 * 1024)
    # A company's published template, or a job's inline content: subject, text and HTML together, in bytes (the
    # API and the worker check it). At most 384 KiB so a TemplatePublished (JSON may escape it to twice that)
    # fits the broker's default 1 MB record.
    template_max_bytes: int = Field(default=256 * 1024, ge=1024, le=384 * 1024)
    # The whole body of a signed request or a provider webhook must arrive within this many seconds (408
    # otherwise); the timestamp window is checked again once it has, and again once the replay store has
    # answered, so a slowly sent body cannot carry a replay past the window.
    api_body_timeout: float = Field(default=60.0, gt=0, le=600)
    # The replay memory every API replica shares (security.seen): the table api_seen_once in this schema, kept
    # apart from the read models so that pointing projection_schema at a rebuilt one (offload replay) keeps it.
    # Every API replica of one deployment must name the same schema.
    api_seen_schema: str = Field(default="offload_api", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    # One retry request per job per this many seconds (429 retry_rate_limited otherwise), across API replicas.
    api_retry_interval: float = Field(default=60.0, ge=0, le=24 * 3600)
    # And at most this many retry requests per job in any 24 hours (429 retry_limit_reached; 0 = no daily cap):
    # one a minute is still 1,440 retry runs a day, each writing the job's failed learners again.
    api_retries_per_job_per_day: int = Field(default=24, ge=0, le=1000)
    # Bounds on waiting for a dependency, so a request answers 503 + Retry-After instead of hanging.
    api_db_timeout: float = Field(default=5.0, gt=0, le=120)  # getting a Postgres connection
    api_handoff_timeout: float = Field(default=10.0, gt=0, le=120)  # Kafka acknowledging a job (acks=all)
    api_retry_after: int = Field(default=5, ge=1, le=3600)  # seconds a client is told to wait on a 503
    api_health_interval: float = Field(default=2.0, gt=0, le=60)  # how often Postgres and Kafka are checked

    @model_validator(mode="after")
    def _refuse_open_limits(self) -> ApiSettings:
        if self.environment == "production" and self.api_retry_interval == 0:
            raise ValueError("api_retry_interval 0 (retries unlimited) is refused in production")
        return self

    @model_validator(mode="after")
    def _check_api_keys(self) -> ApiSettings:
        per_company: dict[int | None, int] = {}
        for key_id, key in self.api_keys.items():
            if not API_KEY_ID.fullmatch(key_id):
                raise ValueError(f"api key id {key_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
            per_company[key.company_id] = per_company.get(key.company_id, 0) + 1
            if self.environment == "production" and (
                len(key.secret.get_secret_value()) < 32
                or key.secret.get_secret_value().strip().lower() in PLACEHOLDERS
            ):
                raise ValueError(f"api key {key_id!r} needs a real secret of at least 32 characters in production")
        crowded = sorted(str(c) for c, n in per_company.items() if n > 2 and c is not None)
        if crowded:
            raise ValueError(f"companies {', '.join(crowded)} have more than two api keys (two allow a rotation)")
        return self

    # === Provider webhooks ========================================================================
    # SES through SNS: only these topic ARNs are accepted (anyone can sign a message with AWS's SNS key from
    # their own topic, so the signature alone proves nothing about the sender). Empty: SES webhooks refused.
    webhook_sns_topic_arns: list[str] = Field(default_factory=list)
    # SendGrid Event Webhook verification key (base64 DER or PEM public key, as SendGrid shows it).
    webhook_sendgrid_public_key: str | None = None
    webhook_mailgun_signing_key: SecretStr | None = None  # Mailgun's HTTP webhook signing key
    # The local relay's bounces (delivery status notifications) posted to /webhooks/smtp with
    # "Authorization: Bearer <this>" (docs/suppression.md shows the relay's side). Unset: refused. >= 32 chars.
    webhook_smtp_token: SecretStr | None = None
    webhook_max_age: float = Field(default=3600, ge=60, le=7 * 24 * 3600)  # older signed timestamps are refused

    # === Monitoring UI and /metrics ===============================================================
    # Signs the admin UI's session cookies (HMAC-SHA256). Unset: a random secret per API process (every
    # sign-in ends when the process restarts; several API replicas need one shared value). >= 32 chars.
    ui_session_secret: SecretStr | None = None
    ui_session_hours: float = Field(default=8, gt=0, le=24 * 7)
    # Cookies marked Secure (HTTPS only); default on in production, off elsewhere (plain http on loopback).
    ui_secure_cookies: bool | None = None
    # When set, /metrics needs "Authorization: Bearer <token>"; unset, it is served to anyone who can reach it
    # (it carries aggregate counts only: no company, job id, address or secret).
    metrics_token: SecretStr | None = None
    # Whether /metrics answers only with that token; default on in production, off elsewhere. Required but no
    # token set: /metrics refuses everyone (and the API says so at start-up).
    metrics_require_token: bool | None = None
    # Largest form the admin UI reads (sign-in, CSRF-protected actions); checked before the body is read.
    ui_max_form_bytes: int = Field(default=8 * 1024, ge=1024, le=1024 * 1024)
    # Requests per minute per client address (an IPv6 client by its /64) on the unauthenticated routes (/verify,
    # /certificates, the UI's sign-in); 0 turns the limit off.
    public_rate_limit_per_minute: int = Field(default=120, ge=0, le=100_000)
    # Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For is believed: the client address is the
    # rightmost hop that is not one of them. Empty: the TCP peer is the client (X-Forwarded-For ignored).
    trusted_proxies: list[str] = Field(default_factory=list)

    @property
    def metrics_token_required(self) -> bool:
        if self.metrics_require_token is not None:
            return self.metrics_require_token
        return self.environment == "production"

    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return _networks(tuple(self.trusted_proxies))

    @model_validator(mode="after")
    def _check_ui_secrets(self) -> ApiSettings:
        for name in ("ui_session_secret", "webhook_smtp_token"):
            secret = getattr(self, name)
            if secret is not None and len(secret.get_secret_value()) < 32:
                raise ValueError(f"{name} must be at least 32 characters")
        try:
            self.trusted_proxy_networks()
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {exc}") from None
        return self



@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)

