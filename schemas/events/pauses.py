"""Automatic pause on bounces and complaints (topic ``jobs``): a job paused on its rates, and resumed on request."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AwareDatetime, Field

from schemas.events.base import Event, utcnow


class JobPaused(Event):
    """A job's bounce or complaint rate passed its company's threshold: its remaining batches wait (neither sent
    nor failed) until someone resumes or cancels it. The figures are those the worker decided on."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.paused.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    company_id: int | None = None
    reason: str = Field(max_length=500, description="e.g. 'bounce rate 4.0% (20 of 500) above 2.0%'")
    sent: int = Field(ge=0, description="messages sent in the sample the rates are computed over")
    bounced: int = Field(ge=0)
    complained: int = Field(ge=0)
    bounce_rate: float
    complaint_rate: float
    bounce_threshold: float
    complaint_threshold: float
    min_sample: int
    paused_at: AwareDatetime = Field(default_factory=utcnow)


class JobResumed(Event):
    """Someone resumed a paused job: its waiting batches are sent; nobody already served is sent again."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.resumed.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    company_id: int | None = None
    requested_by: str = Field(description="the API key id (or operator) that asked; never a secret")
    reason: str | None = Field(default=None, max_length=500)
    resumed_at: AwareDatetime = Field(default_factory=utcnow)
