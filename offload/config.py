"""One typed settings object for every process, read from environment variables and validated at start-up.

Nothing else in the project reads ``os.environ``: processes build a :class:`Settings` once and pass it down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
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
