"""One typed settings object for every process, read from environment variables and validated at start-up.

Nothing else in the project reads ``os.environ``: processes build a :class:`Settings` once and pass it down.
"""

from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DEV_CODE_SECRET = "development-only-certificate-code-secret"
_DEV_MESSAGE_ID_SECRET = "development-only-message-id-secret"
_DEV_CALLBACK_URL_SECRET = "development-only-callback-url-secret"
_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "dev-secret", _DEV_CODE_SECRET, _DEV_MESSAGE_ID_SECRET,
                 _DEV_CALLBACK_URL_SECRET}


class Settings(BaseSettings):
    """Configuration of the worker, projector and CLI.

    Variables are prefixed ``OFFLOAD_`` except the two that every Kafka/Postgres tool already knows:
    ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL``.
    """

    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore", frozen=True, populate_by_name=True)

    environment: Literal["development", "test", "production"] = "development"

    # --- infrastructure -------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:19092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "OFFLOAD_KAFKA_BOOTSTRAP_SERVERS"),
    )
    database_url: str = Field(
        default="postgresql://offload@127.0.0.1:15432/offload",
        validation_alias=AliasChoices("DATABASE_URL", "OFFLOAD_DATABASE_URL"),
    )
    topic_prefix: str = "offload."
    app_id: str = "manireports-offload"
    # Partition counts of the public topics; batches get the most so several workers share one job.
    job_partitions: int = 6
    batch_partitions: int = 12
    outcome_partitions: int = 6
    topic_replication: int = 1
    # Faust's defaults (60 s) make a restarted worker wait ~110 s before it owns partitions again.
    broker_session_timeout: float = 10.0
    broker_heartbeat_interval: float = 1.0
    projection_schema: str = "public"
    # Compression of every record the project produces (cramjam provides lz4/zstd; gzip needs nothing).
    kafka_compression: Literal["lz4", "zstd", "gzip", "none"] = "lz4"

    # --- routing and batching -------------------------------------------------------------------
    cloud_enabled: bool = True  # the global offload switch of the routing rule
    job_batch_size: int = Field(default=200, ge=1, le=1000)
    max_recipients_per_job: int = Field(default=100_000, ge=1)
    # A job run without progress for this long gets its unfinished batches sent again (always safe).
    stall_redispatch_seconds: float = Field(default=60.0, ge=1.0, le=24 * 3600)
    # The worker forgets a finished job's working state (progress, failures kept for retries, callbacks) this
    # long after it finished: a retry must be asked for within it. See docs/retention.md.
    finished_job_retention_days: float = Field(default=30.0, gt=0)
    job_expiry_interval_seconds: float = Field(default=3600.0, ge=0.5)

    # --- email ----------------------------------------------------------------------------------
    mail_from: str = "noreply@moodle.example.org"
    mail_from_name: str = "Moodle"
    message_id_domain: str = "offload.manireports.local"
    # Message-IDs are HMAC(job id, userid) under this secret: the same learner of the same job always gets the
    # same Message-ID (crash safety relies on it), and nobody outside can compute one to forge a webhook
    # report. Every worker and API process of one deployment needs the same value; production refuses the
    # development default.
    message_id_secret: SecretStr = SecretStr(_DEV_MESSAGE_ID_SECRET)
    template_dir: Path | None = None  # extra email templates beside the built-in ones
    default_cloud_email_provider: Literal["ses", "sendgrid", "mailgun"] = "ses"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_use_tls: bool = False
    smtp_connections: int = Field(default=8, ge=1, le=64)
    smtp_timeout: float = 30.0

    aws_region: str = "eu-west-1"
    aws_endpoint_url: str | None = None  # e.g. moto's server in tests
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    ses_configuration_set: str | None = None
    ses_concurrency: int = Field(default=8, ge=1, le=64)
    # How often SES's account quota (GetAccount: MaxSendRate, Max24HourSend) is read again.
    ses_quota_refresh_seconds: float = Field(default=300.0, ge=5, le=24 * 3600)
    # Off: SES is not paced to the quota GetAccount reports (e.g. against moto, whose quota is fixed at 1/s).
    ses_pace_to_account: bool = True

    # SendGrid v3 (POST {sendgrid_base_url}/v3/mail/send) and Mailgun (POST {base}/v3/{domain}/messages).
    # The keys are read from here only and never go into an event, a log line or a projection.
    sendgrid_api_key: SecretStr | None = None
    sendgrid_base_url: str = "https://api.sendgrid.com"
    mailgun_api_key: SecretStr | None = None
    mailgun_domain: str | None = None  # the sending domain set up in Mailgun, e.g. mg.example.org
    mailgun_region: Literal["us", "eu"] = "us"  # picks the base URL below when mailgun_base_url is unset
    mailgun_base_url: str | None = None  # default: https://api.mailgun.net (us) / https://api.eu.mailgun.net (eu)
    http_provider_timeout: float = Field(default=30.0, gt=0, le=300)  # one SendGrid/Mailgun call, whole request
    http_provider_concurrency: int = Field(default=4, ge=1, le=64)  # calls in flight per provider per worker

    # --- pacing ---------------------------------------------------------------------------------
    # Messages per second per provider account (0: no cap of our own; SES also follows GetAccount's
    # MaxSendRate, SendGrid/Mailgun their rate-limit headers). A company can get its own, lower cap.
    provider_rate_limits: dict[str, float] = Field(default_factory=dict)  # e.g. '{"sendgrid": 100}'
    company_rate_limits: dict[int, float] = Field(default_factory=dict)  # e.g. '{"7": 20}'

    # --- cost -----------------------------------------------------------------------------------
    # Estimates only, from the providers' public list prices (late 2026, USD, no free tier or volume
    # discount): SES $0.10 per 1,000 emails and $0.12 per GB of attachments; SendGrid's Pro 100k plan
    # ($89.95/month) ≈ $0.90 per 1,000; Mailgun's Foundation 50k ($35/month) ≈ $0.70 per 1,000 (overage
    # $1.30); S3 Standard $0.023 per GB-month and $0.005 per 1,000 PUTs; R2 $0.015 per GB-month and $4.50
    # per million writes. Override with your contract's prices: OFFLOAD_PRICES='{"ses": {"per_1000": 0.1}}'.
    prices: dict[str, ProviderPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    currency: str = "USD"

    # --- certificates ---------------------------------------------------------------------------
    # Codes are HMACs under this secret: deterministic per job+learner+template, unguessable without it.
    certificate_code_secret: SecretStr = SecretStr(_DEV_CODE_SECRET)
    # The default above is public: anyone could compute codes with it. Certificates are issued with it only
    # when environment is "test" or this is set (the dev stack sets it); otherwise every learner of a
    # certificate job fails with a non-retryable error that names the setting to change.
    certificate_code_secret_allow_default: bool = False
    public_base_url: str = "http://127.0.0.1:8080"  # local certificate URLs: {public_base_url}/certificates/{key}
    certificate_verify_base_url: str = "http://127.0.0.1:8080/verify"  # QR codes point at {this}/{code}
    certificate_storage_root: Path = Path(".dev/certificates")
    certificate_template_dir: Path | None = None  # where new template versions are published
    certificate_bucket: str = "offload-certificates"
    certificate_storage_region: str | None = None  # default: aws_region; "auto" for Cloudflare R2
    certificate_storage_endpoint_url: str | None = None  # default: aws_endpoint_url
    certificate_presign_seconds: int = Field(default=7 * 24 * 3600, ge=60, le=7 * 24 * 3600)
    r2_endpoint_url: str | None = None  # https://<account>.r2.cloudflarestorage.com
    r2_access_key_id: str | None = None
    r2_secret_access_key: SecretStr | None = None
    certificate_render_processes: int = Field(default=0, ge=0, le=64)  # 0: one per core

    # --- retries --------------------------------------------------------------------------------
    max_attempts: int = Field(default=5, ge=1, le=50)
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    # The local relay down: its learners wait this long (seconds of back-off) before failing as retryable.
    # Reconnecting to Postgres or Kafka after losing them: exponential back-off from 0.5 s up to this.
    reconnect_max_delay: float = Field(default=10.0, gt=0, le=300)
    relay_outage_max_seconds: float = Field(default=3600.0, ge=0, le=7 * 24 * 3600)
    # Circuit breaker per cloud provider account and region: opens after this many consecutive failed rounds
    # (unreachable, or only 5xx), sends batches to the local relay for the cool-down, then lets one probe through.
    breaker_failure_threshold: int = Field(default=3, ge=1, le=100)
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0, le=3600)

    def mailgun_url(self) -> str:
        """Mailgun's API base: the configured URL, else the region's (EU accounts live on a separate host)."""
        if self.mailgun_base_url:
            return self.mailgun_base_url.rstrip("/")
        return "https://api.eu.mailgun.net" if self.mailgun_region == "eu" else "https://api.mailgun.net"

    def price_of(self, provider: str) -> ProviderPrice:
        """The price table entry of a provider; one missing from OFFLOAD_PRICES keeps its default."""
        if provider in self.prices:
            return self.prices[provider]
        return DEFAULT_PRICES.get(provider, ProviderPrice())

    @model_validator(mode="after")
    def _check_pacing(self) -> Settings:
        for name, limits in (("provider_rate_limits", self.provider_rate_limits),
                             ("company_rate_limits", self.company_rate_limits)):
            bad = [str(k) for k, v in limits.items() if v < 0]
            if bad:
                raise ValueError(f"{name}: negative rate for {', '.join(bad)} (0 means no cap)")
        unknown = sorted(set(self.provider_rate_limits) - {"smtp", "ses", "sendgrid", "mailgun"})
        if unknown:
            raise ValueError(f"provider_rate_limits: unknown provider {', '.join(unknown)}")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment != "production":
            return self
        for name in ("smtp_password", "aws_secret_access_key", "r2_secret_access_key", "certificate_code_secret",
                     "message_id_secret", "callback_url_secret", "sendgrid_api_key", "mailgun_api_key"):
            value = getattr(self, name)
            if value is not None and value.get_secret_value().strip().lower() in _PLACEHOLDERS:
                raise ValueError(f"{name} is a placeholder; set a real secret in production")
        return self

    @property
    def uses_public_code_secret(self) -> bool:
        """True when certificate codes would be HMACs under the public development default."""
        return self.certificate_code_secret.get_secret_value() == _DEV_CODE_SECRET

    def code_secret_refusal(self) -> str | None:
        """Why certificates must not be issued with these settings, or None when they may."""
        if not self.uses_public_code_secret or self.environment == "test" \
                or self.certificate_code_secret_allow_default:
            return None
        return ("OFFLOAD_CERTIFICATE_CODE_SECRET is the public development default: anyone could compute "
                "certificate codes; set a secret of your own (or OFFLOAD_CERTIFICATE_CODE_SECRET_ALLOW_DEFAULT="
                "true on a development machine)")

    def message_id_key(self) -> bytes:
        return self.message_id_secret.get_secret_value().encode()

    def topic(self, name: str) -> str:
        """Full name of a public topic, e.g. ``topic('jobs')`` -> ``offload.jobs``."""
        return f"{self.topic_prefix}{name}"

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
    # A company's published template, or a job's inline content: subject, text and HTML together, in bytes. At
    # most 384 KiB so a TemplatePublished (JSON may escape it to twice that) fits the broker's default 1 MB.
    template_max_bytes: int = Field(default=256 * 1024, ge=1024, le=384 * 1024)
    # The whole body of a signed request must arrive within this many seconds (408 otherwise); the timestamp
    # window is checked again once it has, so a slowly sent body cannot carry a replay past the window.
    api_body_timeout: float = Field(default=60.0, gt=0, le=600)
    # One retry request per job per this many seconds (429 retry_rate_limited otherwise), across API replicas.
    api_retry_interval: float = Field(default=60.0, ge=0, le=24 * 3600)
    # Bounds on waiting for a dependency, so a request answers 503 + Retry-After instead of hanging.
    api_db_timeout: float = Field(default=5.0, gt=0, le=120)  # getting a Postgres connection
    api_handoff_timeout: float = Field(default=10.0, gt=0, le=120)  # Kafka acknowledging a job (acks=all)
    api_retry_after: int = Field(default=5, ge=1, le=3600)  # seconds a client is told to wait on a 503
    api_health_interval: float = Field(default=2.0, gt=0, le=60)  # how often Postgres and Kafka are checked

    @model_validator(mode="after")
    def _refuse_open_limits(self) -> Settings:
        if self.environment == "production" and self.api_retry_interval == 0:
            raise ValueError("api_retry_interval 0 (retries unlimited) is refused in production")
        return self

    @model_validator(mode="after")
    def _check_api_keys(self) -> Settings:
        per_company: dict[int | None, int] = {}
        for key_id, key in self.api_keys.items():
            if not _API_KEY_ID.fullmatch(key_id):
                raise ValueError(f"api key id {key_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
            per_company[key.company_id] = per_company.get(key.company_id, 0) + 1
            if self.environment == "production" and (
                len(key.secret.get_secret_value()) < 32
                or key.secret.get_secret_value().strip().lower() in _PLACEHOLDERS
            ):
                raise ValueError(f"api key {key_id!r} needs a real secret of at least 32 characters in production")
        crowded = sorted(str(c) for c, n in per_company.items() if n > 2 and c is not None)
        if crowded:
            raise ValueError(f"companies {', '.join(crowded)} have more than two api keys (two allow a rotation)")
        return self

    # === Callbacks to Moodle ======================================================================
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
    callback_url_secret: SecretStr = SecretStr(_DEV_CALLBACK_URL_SECRET)

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
    def _check_callback_settings(self) -> Settings:
        try:
            keys = self.callback_key_table()
        except ValueError as exc:
            raise ValueError(f"callback_keys: {exc}") from None
        for key_id, key in keys.items():
            if not _API_KEY_ID.fullmatch(key_id):
                raise ValueError(f"callback key id {key_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
            secret = key.secret.get_secret_value()
            if self.environment == "production" and (len(secret) < 32 or secret.strip().lower() in _PLACEHOLDERS):
                raise ValueError(f"callback key {key_id!r} needs a real secret of at least 32 characters in production")
        if any(not 0 < m < 100 for m in self.callback_milestones):
            raise ValueError("callback_milestones are percentages strictly between 0 and 100")
        return self

    # === Provider webhooks ========================================================================
    # SES through SNS: only these topic ARNs are accepted (anyone can sign a message with AWS's SNS key from
    # their own topic, so the signature alone proves nothing about the sender). Empty: SES webhooks refused.
    webhook_sns_topic_arns: list[str] = Field(default_factory=list)
    # SendGrid Event Webhook verification key (base64 DER or PEM public key, as SendGrid shows it).
    webhook_sendgrid_public_key: str | None = None
    webhook_mailgun_signing_key: SecretStr | None = None  # Mailgun's HTTP webhook signing key
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
    # Requests per minute per client address on the unauthenticated routes (/verify, /certificates, the UI's
    # sign-in); 0 turns the limit off.
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
    def _check_ui_secrets(self) -> Settings:
        secret = self.ui_session_secret
        if secret is not None and len(secret.get_secret_value()) < 32:
            raise ValueError("ui_session_secret must be at least 32 characters")
        try:
            self.trusted_proxy_networks()
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {exc}") from None
        return self


# === Cost ===========================================================================================
class ProviderPrice(BaseModel):
    """A provider's list price: per 1,000 messages, per request, per GB stored (certificates)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_1000: float = Field(default=0.0, ge=0)
    per_request: float = Field(default=0.0, ge=0)
    per_gb: float = Field(default=0.0, ge=0)


DEFAULT_PRICES: dict[str, ProviderPrice] = {
    "smtp": ProviderPrice(),  # Moodle's own relay: no per-message price
    "local": ProviderPrice(),
    "ses": ProviderPrice(per_1000=0.10, per_gb=0.12),
    "sendgrid": ProviderPrice(per_1000=0.90),
    "mailgun": ProviderPrice(per_1000=0.70),
    "s3": ProviderPrice(per_request=0.000005, per_gb=0.023),
    "r2": ProviderPrice(per_request=0.0000045, per_gb=0.015),
}


# === API: the Moodle-facing side ====================================================================
_API_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ApiKey(BaseModel):
    """One signing key: the shared secret and the company it speaks for (None: an admin key, every company).

    ``company_id`` must be given, ``null`` included: a key that forgot it must not quietly become an admin key
    that sees every company.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: SecretStr = Field(min_length=16)
    company_id: int | None = Field(ge=0, description="the key's company; null (explicitly) for an admin key")



@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


# === Callbacks to Moodle ==========================================================================
@lru_cache(maxsize=8)
def _parse_callback_keys(raw: str) -> dict[str, ApiKey]:
    try:
        data = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object of key id -> {secret, company_id}")  # noqa: TRY004
    try:
        return {str(key_id): ApiKey.model_validate(value) for key_id, value in data.items()}
    except ValidationError as exc:
        raise ValueError(str(exc.errors(include_url=False, include_input=False))) from None


Settings.model_rebuild()
