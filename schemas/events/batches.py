"""A job's batches (topics ``batches`` and ``jobs``): dispatched, located in the log, completed, or fallen back
from the cloud provider to the local one."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.events.base import Event, JobType, MailCategory, Route, utcnow
from schemas.events.content import InlineContent, TemplateSource
from schemas.events.jobs import Recipient


class BatchDispatched(Event):
    """One batch of a job's recipients; keyed job_id:run:batch_no so batches spread over partitions."""

    ce_type: ClassVar[str] = "org.manireports.offload.batch.dispatched.v1"
    topic: ClassVar[str] = "batches"

    job_id: str
    run: int = Field(default=0, description="0 for the first run, n for the n-th retry run")
    batch_no: int
    batch_count: int
    type: JobType
    company_id: int
    route: Route
    provider: str
    template_id: str
    template_data: dict[str, Any] = Field(default_factory=dict)
    recipients: list[Recipient]
    notify_template_id: str | None = None
    dispatched_at: AwareDatetime = Field(default_factory=utcnow)
    template_data_at: tuple[int, int] | None = Field(
        default=None,
        description="(partition, offset) of the JobRequested in job-requests whose template_data this batch uses; "
                    "set, template_data is left empty: the job's data is written to the log once, not once per batch",
    )
    template_source: TemplateSource | None = Field(
        default=None, description="as on JobAccepted; None (older records): the built-in template")
    template_version: int | None = Field(default=None, description="the company template version to render")
    content: InlineContent | None = Field(
        default=None, description="inline content; left empty when template_data_at is set (read from the request)")

    category: MailCategory | None = Field(
        default=None, description="bulk: one-click unsubscribe headers and the list's suppressions apply")
    list_id: str | None = Field(default=None, description="bulk jobs: the unsubscribe list")

    def kafka_key(self) -> str:
        return f"{self.job_id}:{self.run}:{self.batch_no}"


class BatchesDispatched(Event):
    """Where each batch of a job run lies in the log, so a stalled run's missing batches can be sent again."""

    ce_type: ClassVar[str] = "org.manireports.offload.batches.dispatched.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    run: int = 0
    locations: list[tuple[int, int]] = Field(description="(partition, offset) of batch 0, 1, … in the batches topic")
    dispatched_at: AwareDatetime = Field(default_factory=utcnow)


class FailedRecipient(BaseModel):
    model_config = ConfigDict(frozen=True)

    userid: int
    retryable: bool


class BatchCompleted(Event):
    """Every recipient of a batch has a terminal outcome in this run; feeds job progress and retries."""

    ce_type: ClassVar[str] = "org.manireports.offload.batch.completed.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    run: int = 0
    batch_no: int
    batch_count: int
    succeeded: int
    failed: int
    fell_back: bool = False
    failures: list[FailedRecipient] = Field(default_factory=list, description="who failed, for a later retry")
    source_partition: int | None = Field(default=None, description="where the BatchDispatched record lies")
    source_offset: int | None = None
    sent_by: dict[str, int] = Field(default_factory=dict, description="succeeded learners by provider/backend")
    pacing: str | None = Field(default=None, description="what paced the batch, e.g. 'paced by SES max send rate 14/s'")
    completed_at: AwareDatetime = Field(default_factory=utcnow)
    suppressed: int = Field(default=0, description="learners not sent: on the company's suppression list")


class BatchWaitingForQuota(Event):
    """A batch's sends wait: its provider account's 24-hour quota is used up (SES ``Max24HourSend``, with
    ``OFFLOAD_SES_DAILY_QUOTA=pause``). They go on once a read of the account shows room; the batch's
    BatchCompleted then says what paced it."""

    ce_type: ClassVar[str] = "org.manireports.offload.batch.waiting-for-quota.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    run: int = 0
    batch_no: int
    provider: str
    reason: str = Field(description="e.g. 'SES 24-hour quota reached: 200 of Max24HourSend 200 sent in the last 24 h'")
    waiting_since: AwareDatetime = Field(default_factory=utcnow)


class BatchWaitingForDependency(Event):
    """A batch's work waits for what it cannot do without, without failing anyone: the local relay unreachable
    (waited out for up to ``OFFLOAD_RELAY_OUTAGE_MAX_SECONDS``), or the last certificate store it can use taking no
    files (``OFFLOAD_STORAGE_OUTAGE_MAX_SECONDS``). Said once per batch, as the wait begins, so the job's page says
    at once why it stands still; the batch's BatchCompleted ends what it says."""

    ce_type: ClassVar[str] = "org.manireports.offload.batch.waiting-for-dependency.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    run: int = 0
    batch_no: int
    dependency: str = Field(description="as the worker's health names it, e.g. 'smtp-relay', 'storage local'")
    reason: str = Field(max_length=1000, description="e.g. 'local certificate store /srv/certs: [Errno 28] No "
                                                     "space left on device'")
    waiting_since: AwareDatetime = Field(default_factory=utcnow)


class JobFellBackToLocal(Event):
    """The cloud provider was unavailable past the retry budget; the rest of the batch went local."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.fell-back-to-local.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    run: int = 0
    batch_no: int
    from_provider: str
    to_provider: str
    reason: str
    fell_back_at: AwareDatetime = Field(default_factory=utcnow)
