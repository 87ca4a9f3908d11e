"""Settings for mail that inboxes accept: DKIM keys per company, and when a job pauses on bounces/complaints.

A part of :class:`config.settings.Settings` (same ``OFFLOAD_`` variables), kept apart so the rules of bulk
sending live in one place. Private keys are read from a file or from a secret variable and never leave the
worker's memory: no event, log line or projection carries one.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from config.base import SettingsBase

_DNS_LABEL = r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$"
_DOMAIN = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
ANY_COMPANY = "*"  # the key of dkim_keys used for a company without a key of its own


class DkimKey(BaseModel):
    """One signing identity: ``d=`` domain, ``s=`` selector and the RSA private key (a PEM file, or inline)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    domain: str = Field(max_length=253, pattern=_DOMAIN)
    selector: str = Field(pattern=_DNS_LABEL)
    key_file: Path | None = Field(default=None, description="PEM file of the RSA private key")
    private_key: SecretStr | None = Field(default=None, description="the PEM itself, e.g. from a secret store")

    @model_validator(mode="after")
    def _one_source(self) -> DkimKey:
        if (self.key_file is None) == (self.private_key is None):
            raise ValueError("give exactly one of key_file or private_key")
        return self

    def env_value(self) -> dict[str, str]:
        """This key as the JSON OFFLOAD_DKIM_KEYS holds (for child processes; the key itself when inline)."""
        out = {"domain": self.domain, "selector": self.selector}
        if self.key_file is not None:
            out["key_file"] = str(self.key_file)
        if self.private_key is not None:
            out["private_key"] = self.private_key.get_secret_value()
        return out

    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


class PauseThresholds(BaseModel):
    """A company's own limits; a field left out keeps the deployment's default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bounce_rate: float | None = Field(default=None, gt=0, le=1)
    complaint_rate: float | None = Field(default=None, gt=0, le=1)


class DeliverabilitySettings(SettingsBase):
    # DKIM keys of the SMTP route by company id, e.g. OFFLOAD_DKIM_KEYS='{"7": {"domain": "school7.example",
    # "selector": "s2026", "key_file": "/etc/offload/dkim-7.pem"}, "*": {...}}'; "*" signs every other company.
    # SES, SendGrid and Mailgun sign with their own (Easy DKIM / domain authentication) and are left alone.
    dkim_keys: dict[str, DkimKey] = Field(default_factory=dict)
    # At start the API and the worker look up <selector>._domainkey.<domain> TXT and warn (log, health, metrics)
    # when it is missing or holds another key. Off for machines without DNS.
    dkim_dns_check: bool = True
    dkim_dns_timeout: float = Field(default=5.0, gt=0, le=60)

    # Automatic pause: once a job has sent pause_min_sample messages, a bounce rate above pause_bounce_rate or
    # a complaint rate above pause_complaint_rate pauses it (JobPaused) until an admin resumes or cancels it.
    pause_min_sample: int = Field(default=500, ge=1)
    pause_bounce_rate: float = Field(default=0.02, gt=0, le=1)
    pause_complaint_rate: float = Field(default=0.001, gt=0, le=1)
    company_pause_thresholds: dict[int, PauseThresholds] = Field(default_factory=dict)  # '{"7": {"bounce_rate": 0.05}}'

    @model_validator(mode="after")
    def _check_dkim_keys(self) -> DeliverabilitySettings:
        bad = [k for k in self.dkim_keys if k != ANY_COMPANY and not k.isdigit()]
        if bad:
            raise ValueError(f"dkim_keys: keys are company ids or \"*\", not {', '.join(bad)}")
        return self

    def dkim_key_for(self, company_id: int) -> DkimKey | None:
        return self.dkim_keys.get(str(company_id)) or self.dkim_keys.get(ANY_COMPANY)

    def pause_thresholds_for(self, company_id: int | None) -> tuple[float, float]:
        """(bounce rate, complaint rate) above which a job of this company pauses."""
        own = self.company_pause_thresholds.get(company_id) if company_id is not None else None
        bounce = own.bounce_rate if own and own.bounce_rate is not None else self.pause_bounce_rate
        complaint = own.complaint_rate if own and own.complaint_rate is not None else self.pause_complaint_rate
        return bounce, complaint
