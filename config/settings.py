"""One typed settings object for every process, read from environment variables and validated at start-up.

Nothing else in the project reads ``os.environ``: processes build a :class:`Settings` once and pass it down.
The fields of the HTTP side (``config/api.py``), of the callbacks to Moodle (``config/callbacks.py``) and of
unsubscribe and suppression lists (``config/suppression.py``) are declared in parts of their own; ``Settings``
is all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from config.api import ApiSettings
from config.base import DEV_CODE_SECRET, DEV_MESSAGE_ID_SECRET, PLACEHOLDERS
from config.callbacks import CallbackSettings
from config.deliverability import DeliverabilitySettings
from config.keys import ApiKey
from config.prices import DEFAULT_PRICES, ProviderPrice
from config.suppression import SuppressionSettings

__all__ = ["DEFAULT_PRICES", "ApiKey", "EventLoop", "ProviderPrice", "Settings"]

EventLoop = Literal["uvloop", "asyncio"]


class Settings(ApiSettings, CallbackSettings, DeliverabilitySettings, SuppressionSettings):
    """Configuration of the worker, projector and CLI.

    Variables are prefixed ``OFFLOAD_`` except the two that every Kafka/Postgres tool already knows:
    ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL``.
    """

    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore", frozen=True, populate_by_name=True)

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
    # A worker whose table recovery has not moved on an active changelog partition (records left) for this long,
    # while the broker answers, fetches that partition again; still stuck as long again, it exits (code 75) for
    # its supervisor to restart it. 0 turns the watch off. See streams/recovery_watch.py.
    recovery_stall_seconds: float = Field(default=60.0, ge=0, le=3600)
    projection_schema: str = "public"
    # Where `offload worker` and `offload projector` answer GET /health and GET /metrics (resilience.probe);
    # port 0 serves neither. One process per port: give the worker and the projector different ones when both
    # run on one host (the API has its own, /api/v1/health and /metrics). /metrics takes OFFLOAD_METRICS_TOKEN.
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=0, ge=0, le=65535)
    # How often the worker and the projector ask the broker for metadata to report Kafka in their health (an idle
    # consumer does not notice a broker gone: eventlog.broker_ping).
    health_interval: float = Field(default=5.0, gt=0, le=300)
    # Compression of every record the project produces (cramjam provides lz4/zstd; gzip needs nothing).
    kafka_compression: Literal["lz4", "zstd", "gzip", "none"] = "lz4"
    # The event loop of `offload worker`, `offload projector` and `offload api` (offload/loop.py): uvloop's, or
    # Python's own asyncio loop.
    event_loop: EventLoop = "uvloop"

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
    # A chunked job (POST /api/v1/jobs with "chunked": true) not committed this long after it was opened is
    # rejected (JobRejected, code chunked_job_not_committed), checked every job_expiry_interval_seconds.
    chunked_job_max_open_hours: float = Field(default=24.0, gt=0)

    # --- email ----------------------------------------------------------------------------------
    mail_from: str = "noreply@moodle.example.org"
    mail_from_name: str = "Moodle"
    message_id_domain: str = "offload.manireports.local"
    # Message-IDs are HMAC(job id, userid) under this secret: the same learner of the same job always gets the
    # same Message-ID (crash safety relies on it), and nobody outside can compute one to forge a webhook
    # report. Every worker and API process of one deployment needs the same value; production refuses the
    # development default.
    message_id_secret: SecretStr = SecretStr(DEV_MESSAGE_ID_SECRET)
    template_dir: Path | None = None  # extra email templates beside the built-in ones
    default_cloud_email_provider: Literal["ses", "sendgrid", "mailgun"] = "ses"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_use_tls: bool = False
    # With STARTTLS or implicit TLS: the CA certificates (PEM) to check the relay's certificate against instead of
    # the system's, for a relay whose certificate the site's own CA issued. Its name is checked either way.
    smtp_ca_file: Path | None = None
    smtp_connections: int = Field(default=8, ge=1, le=64)
    # Pipeline MAIL, RCPT and DATA (RFC 2920) where the relay advertises PIPELINING; false: always in lockstep.
    smtp_pipelining: bool = True
    # Send each message's content with BDAT (RFC 3030) where the relay advertises CHUNKING and PIPELINING, up to
    # smtp_window messages on a session before the first is answered; false: DATA, one message at a time.
    smtp_chunking: bool = True
    smtp_window: int = Field(default=4, ge=1, le=64)
    smtp_timeout: float = 30.0

    aws_region: str = "eu-west-1"
    aws_endpoint_url: str | None = None  # e.g. moto's server in tests
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    ses_configuration_set: str | None = None
    ses_concurrency: int = Field(default=8, ge=1, le=64)
    # How often SES's account quota (GetAccount: MaxSendRate, Max24HourSend) is read again.
    ses_quota_refresh_seconds: float = Field(default=300.0, ge=5, le=24 * 3600)
    # Off: SES is not paced to the MaxSendRate GetAccount reports (e.g. against moto, whose quota is fixed at
    # 1/s); the 24-hour quota follows ses_daily_quota either way.
    ses_pace_to_account: bool = True
    # When the next SES send would pass the account's Max24HourSend (SentLast24Hours + what this worker sent
    # since the last read): "pause" holds SES sends (the quota is read again every minute meanwhile) until
    # the 24-hour window has room; "local" sends the rest to the local relay (JobFellBackToLocal says why);
    # "off" does not watch the 24-hour quota (SES itself then refuses with "Daily message quota exceeded").
    # A paused SES batch holds its worker's batch agent (one batch at a time), so other batches on that
    # worker wait too: choose "local" when other companies' jobs must not wait for SES's window.
    ses_daily_quota: Literal["pause", "local", "off"] = "pause"

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
    # How often jobs waiting for their company's monthly budget (over_budget "wait") are looked at again.
    budget_recheck_seconds: float = Field(default=60.0, ge=0.2, le=3600)

    # --- certificates ---------------------------------------------------------------------------
    # Codes are HMACs under this secret: deterministic per job+learner+template, unguessable without it.
    certificate_code_secret: SecretStr = SecretStr(DEV_CODE_SECRET)
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
    # The last certificate store a batch can use unavailable (a full disk, a cloud store with no fallback): its
    # learners wait this long (seconds of back-off) before failing as retryable.
    storage_outage_max_seconds: float = Field(default=3600.0, ge=0, le=7 * 24 * 3600)
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
                     "message_id_secret", "callback_url_secret", "sendgrid_api_key", "mailgun_api_key",
                     "unsubscribe_secret"):
            value = getattr(self, name)
            if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDERS:
                raise ValueError(f"{name} is a placeholder; set a real secret in production")
        return self

    @property
    def uses_public_code_secret(self) -> bool:
        """True when certificate codes would be HMACs under the public development default."""
        return self.certificate_code_secret.get_secret_value() == DEV_CODE_SECRET

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

    def unsubscribe_url_base(self) -> str:
        """Where bulk mail's one-click links point: {this}/u/{token} (docs/suppression.md)."""
        return (self.unsubscribe_base_url or self.public_base_url).rstrip("/")

    def topic(self, name: str) -> str:
        """Full name of a public topic, e.g. ``topic('jobs')`` -> ``offload.jobs``."""
        return f"{self.topic_prefix}{name}"
