"""The monthly budget's "wait" (topic ``jobs``, keyed by job id): a cloud job that would take its company past its
budget, held back until the budget allows it (``streams.budget_wait``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AwareDatetime, Field

from schemas.events.base import Event, JobType, utcnow


class JobWaitingForBudget(Event):
    """A cloud job would take its company past the monthly budget and the company's setting is to wait: no batch
    exists yet. The worker checks again every ``OFFLOAD_BUDGET_RECHECK_SECONDS``; when the budget allows it (a
    new month, a larger budget, or a setting that no longer routes it to the cloud) a JobAccepted follows."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.waiting-for-budget.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    type: JobType
    company_id: int
    template_id: str
    total_recipients: int
    month: str = Field(description="YYYY-MM (UTC)")
    monthly_budget: float
    spent: float = Field(description="estimated cost of the company's cloud jobs accepted this month")
    estimated_cost: float = Field(description="of this job on the provider it waits for")
    currency: str
    provider: str = Field(description="the cloud provider it waits for")
    reason: str
    createdby: int | None = None
    waiting_since: AwareDatetime = Field(default_factory=utcnow)
