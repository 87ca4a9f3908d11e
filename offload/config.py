"""One typed settings object for every process, read from environment variables and validated at start-up.

Nothing else in the project reads ``os.environ``: processes build a :class:`Settings` once and pass it down.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DEV_CODE_SECRET = "development-only-certificate-code-secret"
_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "dev-secret", _DEV_CODE_SECRET}


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

    # --- routing and batching -------------------------------------------------------------------
    cloud_enabled: bool = True  # the global offload switch of the routing rule
    job_batch_size: int = Field(default=200, ge=1, le=1000)
    max_recipients_per_job: int = Field(default=100_000, ge=1)
    # Batches one worker serves at once; each batch's recipients are already sent concurrently.
    batches_in_flight: int = Field(default=4, ge=1, le=64)

    # --- email ----------------------------------------------------------------------------------
    mail_from: str = "noreply@moodle.example.org"
    mail_from_name: str = "Moodle"
    message_id_domain: str = "offload.manireports.local"
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

    # --- certificates ---------------------------------------------------------------------------
    # Codes are HMACs under this secret: deterministic per job+learner+template, unguessable without it.
    certificate_code_secret: SecretStr = SecretStr(_DEV_CODE_SECRET)
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

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment != "production":
            return self
        for name in ("smtp_password", "aws_secret_access_key", "r2_secret_access_key", "certificate_code_secret"):
            value = getattr(self, name)
            if value is not None and value.get_secret_value().strip().lower() in _PLACEHOLDERS:
                raise ValueError(f"{name} is a placeholder; set a real secret in production")
        return self

    def topic(self, name: str) -> str:
        """Full name of a public topic, e.g. ``topic('jobs')`` -> ``offload.jobs``."""
        return f"{self.topic_prefix}{name}"

    # === API: the Moodle-facing side (issue 5) ====================================================
    # Per-company signing keys by key id, e.g. OFFLOAD_API_KEYS='{"moodle-7-2026a": {"secret": "...",
    # "company_id": 7}, "ops": {"secret": "...", "company_id": null}}'; company_id null is an admin key.
    # Two keys per company may be valid at once, so a key is rotated without downtime.
    api_keys: dict[str, ApiKey] = Field(default_factory=dict)
    api_timestamp_window: float = Field(default=300, ge=5, le=3600)  # seconds either side of now
    # Default = the job-requests topic's max.message.bytes (streams.topics.MAX_MESSAGE_BYTES, 32 MiB): a body
    # the API admits always fits in one Kafka record. A 100,000-recipient job is ~10-20 MB of JSON.
    api_max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024, le=32 * 1024 * 1024)
    # Callback URLs resolving to loopback/private/link-local addresses are refused unless this is set.
    api_allow_private_callbacks: bool = False
    api_db_pool_size: int = Field(default=10, ge=1, le=100)

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


# === API: the Moodle-facing side (issue 5) ========================================================
_API_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ApiKey(BaseModel):
    """One signing key: the shared secret and the company it speaks for (None: an admin key, every company)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: SecretStr = Field(min_length=16)
    company_id: int | None = Field(default=None, ge=0)


Settings.model_rebuild()
