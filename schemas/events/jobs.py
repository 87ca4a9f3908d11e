"""A job's life as a whole (topics ``job-requests`` and ``jobs``): asked for, rejected or accepted, over budget,
cancelled, retried, completed; and the job ids and learners a request carries."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.events.base import Event, JobType, MailCategory, Route, utcnow
from schemas.events.content import InlineContent, TemplateSource

# No ":" (it separates the parts of batch keys) and nothing that could not name a storage object.
JOB_ID_MAX_LENGTH = 128
JobId = Annotated[str, StringConstraints(min_length=1, max_length=JOB_ID_MAX_LENGTH, pattern=r"^[A-Za-z0-9._-]+$")]
TemplateId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9_-]+$")]


# Job ids are chosen by each company's Moodle, so two companies may pick the same one. The API then gives the
# second company's job the id "<its id>..c<company>" in the log and read models, and shows, reads and calls back
# with the id that company chose. A client id may not itself end in that form.
SCOPED_SUFFIX = re.compile(r"\.\.c[0-9]{1,10}$")


def scoped_job_id(job_id: str, company_id: int) -> str:
    return f"{job_id}..c{company_id}"


def scoped_id_room(company_id: int) -> int:
    """The longest job id a company may choose: one that still fits JobId when scoped."""
    return JOB_ID_MAX_LENGTH - len(scoped_job_id("", company_id))


def client_job_id(job_id: str, company_id: int) -> str:
    """The id the company chose for a job stored under ``job_id``."""
    suffix = f"..c{company_id}"
    return job_id.removesuffix(suffix)


class Recipient(BaseModel):
    """One learner of a job as Moodle sends it; extra profile fields are kept for templates."""

    model_config = ConfigDict(frozen=True, extra="allow")

    userid: int = Field(ge=1)
    email: str = Field(max_length=254)
    firstname: str = Field(default="", max_length=200)
    lastname: str = Field(default="", max_length=200)

    def template_fields(self) -> dict[str, Any]:
        fields = dict(self.model_extra or {})
        fields.update(userid=self.userid, email=self.email, firstname=self.firstname, lastname=self.lastname)
        return fields

    @property
    def full_name(self) -> str:
        return f"{self.firstname} {self.lastname}".strip()


class JobRequested(Event):
    """What Moodle asked for: the original design's Job JSON, minus any secret (no callback_secret)."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.requested.v1"
    topic: ClassVar[str] = "job-requests"

    job_id: JobId
    type: JobType
    company_id: int = Field(ge=0)
    recipients: list[Recipient] = Field(min_length=1)
    template_id: TemplateId
    template_data: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = Field(default=None, max_length=2048)
    callback_query_sealed: str | None = Field(
        default=None, max_length=4096,
        description="set by the API: callback_url's query string, AES-GCM sealed under the deployment's "
                    "callback_url_secret and bound to the job id; callback_url then has no query",
    )
    timestamp: int | None = Field(default=None, description="Moodle's unix time of submission")
    createdby: int | None = None
    callback_key_id: str | None = Field(default=None, max_length=64, description="names a callback key, never the key")
    notify_template_id: TemplateId | None = Field(
        default=None, description="certificate jobs: email each learner a link to their certificate with this template"
    )
    category: MailCategory | None = Field(
        default=None, description="bulk (one-click unsubscribe, suppression lists) or transactional; unset: "
                                  "certificate jobs and OFFLOAD_TRANSACTIONAL_TEMPLATES are transactional, "
                                  "other email jobs bulk")
    list_id: TemplateId | None = Field(
        default=None, description="the list a learner unsubscribes from with this job's link; default: template_id")
    content: InlineContent | None = Field(
        default=None, description="email jobs: the message itself (subject, html, text) instead of a stored "
                                  "template; template_id then only names it in reports")


class Problem(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: str
    message: str
    code: str | None = Field(default=None, description="a code a client can match, e.g. unknown_template")


class JobRejected(Event):
    """A job that failed validation, with every problem found."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.rejected.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    company_id: int | None = None
    problems: list[Problem]
    rejected_at: AwareDatetime = Field(default_factory=utcnow)
    # Added within v1 (optional): set only when Moodle is told by callback, i.e. a chunked job closed for staying
    # open (nobody is waiting for an answer then); as on JobAccepted, the URL without its query, never a secret.
    callback_url: str | None = Field(default=None, max_length=2048)
    callback_query_sealed: str | None = Field(default=None, description="as on JobRequested: never in clear")
    callback_key_id: str | None = Field(default=None, max_length=64, description="names a callback key, never the key")


class JobAccepted(Event):
    """The routing decision and its reason, and how the job was split into batches."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.accepted.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    type: JobType
    company_id: int
    route: Route
    reason: str
    provider: str = Field(description="email: smtp|ses|sendgrid|mailgun; certificate: local|s3|r2")
    template_id: str
    total_recipients: int
    duplicates_removed: int = 0
    batch_size: int
    batch_count: int
    callback_url: str | None = None
    createdby: int | None = None
    callback_key_id: str | None = Field(
        default=None, max_length=64,
        description="the JobRequested's callback key id, carried for the callback agent; names a key, never the key",
    )
    accepted_at: AwareDatetime = Field(default_factory=utcnow)
    callback_query_sealed: str | None = Field(default=None, description="as on JobRequested: never in clear")
    category: MailCategory | None = Field(default=None, description="as decided by the route agent")
    list_id: str | None = Field(default=None, description="bulk jobs: the unsubscribe list")
    template_source: TemplateSource | None = Field(
        default=None, description="email jobs: where the message comes from: the company's own template, the "
                                  "built-in one of that id, or the job's inline content (None on older records)")
    template_version: int | None = Field(
        default=None, description="the company template version every batch and retry run of this job uses")


class JobCompleted(Event):
    """Every recipient of the job has a terminal outcome; totals over all batches."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.completed.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    run: int = 0
    total: int
    succeeded: int
    failed: int
    cancelled: bool = Field(default=False, description="the job was cancelled; its unserved recipients failed")
    estimated_cost: float | None = Field(
        default=None, description="estimate of every run so far, from the settings' price table (OFFLOAD_PRICES)")
    currency: str | None = Field(default=None, description="of estimated_cost, e.g. USD")
    completed_at: AwareDatetime = Field(default_factory=utcnow)
    suppressed: int = Field(default=0, description="learners not sent: on the suppression list (not in total's "
                                                   "succeeded or failed)")


class JobOverBudget(Event):
    """A cloud job would take its company past the monthly budget: what was done about it, and the figures."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.over-budget.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    company_id: int
    month: str = Field(description="YYYY-MM (UTC)")
    monthly_budget: float
    spent: float = Field(description="estimated cost of the company's cloud jobs accepted this month")
    estimated_cost: float = Field(description="of this job on the provider it would have used")
    currency: str
    provider: str = Field(description="the cloud provider it would have used")
    action: Literal["routed_local"]
    reason: str
    decided_at: AwareDatetime = Field(default_factory=utcnow)


# --- requests from the API ----------------------------------------------------------------------------------
class JobCancelled(Event):
    """Someone asked that a job's remaining recipients not be served; what was already sent stays sent."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.cancelled.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    company_id: int | None = None
    requested_by: str = Field(description="the API key id (or operator) that asked; never a secret")
    reason: str | None = Field(default=None, max_length=500)
    cancelled_at: AwareDatetime = Field(default_factory=utcnow)


class JobRetryRequested(Event):
    """Someone asked to serve a job's failed recipients again (a new run); the worker decides who qualifies."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.retry-requested.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    company_id: int | None = None
    requested_by: str = Field(description="the API key id (or operator) that asked; never a secret")
    only_retryable: bool = Field(default=True, description="true: only failures marked retryable; false: all")
    requested_at: AwareDatetime = Field(default_factory=utcnow)
