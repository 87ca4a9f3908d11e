"""A company's cloud settings (topic ``company-settings``, compacted by company)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field

from schemas.events.base import Event, utcnow


class CompanySettingsChanged(Event):
    """A company's cloud settings (the original design's company_cloud_settings row), compacted by company."""

    ce_type: ClassVar[str] = "org.manireports.offload.company-settings.changed.v1"
    topic: ClassVar[str] = "company-settings"

    company_id: int = Field(ge=0)
    cloud_enabled: bool = False
    use_cloud_for_emails: bool = False
    use_cloud_for_certificates: bool = False
    user_threshold: int = Field(default=0, ge=0)
    email_provider: Literal["ses", "sendgrid", "mailgun"] = "ses"
    storage_provider: Literal["s3", "r2"] = "s3"
    monthly_budget: float | None = Field(
        default=None, ge=0, description="cloud spend allowed per calendar month (UTC), in the worker's currency")
    over_budget: Literal["local", "wait"] = Field(
        default="local", description="what a cloud job that would go past the budget does: route local, or wait "
                                     "until the budget allows it (next month, or a larger budget)")
    changed_by: str | None = None
    changed_at: AwareDatetime = Field(default_factory=utcnow)

    def subject(self) -> str:
        return str(self.company_id)
