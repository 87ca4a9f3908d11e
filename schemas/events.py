"""The event contract: frozen, typed values named in the past tense, free of Faust and Kafka types.

These classes are the one source of truth. ``python -m schemas.generate`` writes the JSON Schema files under
``schemas/json/`` from them for other teams; a test fails when the committed files drift from this code.
Within a version only optional fields are added; a breaking change is a new ``.vN`` type.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

JobType = Literal["email", "certificate"]
Route = Literal["cloud", "local"]
EmailProviderName = Literal["smtp", "ses", "sendgrid", "mailgun"]
StorageProviderName = Literal["local", "s3", "r2"]

# No ":" (it separates the parts of batch keys) and nothing that could not name a storage object.
JobId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
TemplateId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9_-]+$")]


# Job ids are chosen by each company's Moodle, so two companies may pick the same one. The API then gives the
# second company's job the id "<its id>..c<company>" in the log and read models, and shows, reads and calls back
# with the id that company chose. A client id may not itself end in that form.
SCOPED_SUFFIX = re.compile(r"\.\.c[0-9]{1,10}$")


def scoped_job_id(job_id: str, company_id: int) -> str:
    return f"{job_id}..c{company_id}"


def client_job_id(job_id: str, company_id: int) -> str:
    """The id the company chose for a job stored under ``job_id``."""
    suffix = f"..c{company_id}"
    return job_id.removesuffix(suffix)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event. Unknown fields are ignored so old consumers read newer producers."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    ce_type: ClassVar[str]
    topic: ClassVar[str]  # short topic name; the full name is Settings.topic(topic)

    def subject(self) -> str:
        """The CloudEvents subject and the Kafka key: the job id for job events."""
        return str(getattr(self, "job_id"))  # noqa: B009 - job events declare job_id; the others override this

    def kafka_key(self) -> str:
        return self.subject()


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


class InlineContent(BaseModel):
    """A message Moodle composed itself: rendered in the same sandbox as a template, checked the same way."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Hard bounds of the contract; the deployment's own cap (Settings.template_max_bytes) is checked at intake.
    subject: str = Field(min_length=1, max_length=2000)
    html: str = Field(default="", max_length=4 * 1024 * 1024)
    text: str = Field(default="", max_length=4 * 1024 * 1024)


TemplateSource = Literal["builtin", "company", "inline"]


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
    rejected_at: datetime = Field(default_factory=utcnow)


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
    accepted_at: datetime = Field(default_factory=utcnow)
    callback_query_sealed: str | None = Field(default=None, description="as on JobRequested: never in clear")
    template_source: TemplateSource | None = Field(
        default=None, description="email jobs: where the message comes from: the company's own template, the "
                                  "built-in one of that id, or the job's inline content (None on older records)")
    template_version: int | None = Field(
        default=None, description="the company template version every batch and retry run of this job uses")


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
    dispatched_at: datetime = Field(default_factory=utcnow)
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

    def kafka_key(self) -> str:
        return f"{self.job_id}:{self.run}:{self.batch_no}"


class BatchesDispatched(Event):
    """Where each batch of a job run lies in the log, so a stalled run's missing batches can be sent again."""

    ce_type: ClassVar[str] = "org.manireports.offload.batches.dispatched.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    run: int = 0
    locations: list[tuple[int, int]] = Field(description="(partition, offset) of batch 0, 1, … in the batches topic")
    dispatched_at: datetime = Field(default_factory=utcnow)


class RecipientOutcome(Event):
    """What happened to one learner of one batch run: the terminal outcomes share these fields."""

    topic: ClassVar[str] = "outcomes"

    job_id: str
    run: int = 0
    batch_no: int
    userid: int
    email: str


class RecipientSent(RecipientOutcome):
    """A message accepted by the provider for one recipient."""

    ce_type: ClassVar[str] = "org.manireports.offload.recipient.sent.v1"

    provider: str
    provider_message_id: str | None = None
    message_id: str
    attempts: int
    sent_at: datetime = Field(default_factory=utcnow)


class RecipientFailed(RecipientOutcome):
    """A recipient that could not be served in this run; retryable says whether a later retry may help."""

    ce_type: ClassVar[str] = "org.manireports.offload.recipient.failed.v1"

    provider: str | None = None
    error: str
    attempts: int
    retryable: bool
    failed_at: datetime = Field(default_factory=utcnow)


class CertificateIssued(RecipientOutcome):
    """A certificate rendered and stored for one recipient."""

    ce_type: ClassVar[str] = "org.manireports.offload.certificate.issued.v1"

    url: str
    object_key: str
    sha256: str
    size: int
    code: str
    template_id: str
    template_version: int
    backend: StorageProviderName
    attempts: int = 1
    emailed: bool | None = Field(default=None, description="None: no email asked for; else whether it went out")
    email_message_id: str | None = None
    email_error: str | None = None
    issued_at: datetime = Field(default_factory=utcnow)
    # What the certificate says, so /verify answers from the read model (absent on certificates issued before
    # these fields existed: they verify as valid without details).
    holder_name: str | None = Field(default=None, description="the learner's name as printed")
    course_name: str | None = Field(default=None, description="the course as printed")
    completion_date: date | None = Field(default=None, description="the completion date as printed")


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
    completed_at: datetime = Field(default_factory=utcnow)


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
    fell_back_at: datetime = Field(default_factory=utcnow)


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
    completed_at: datetime = Field(default_factory=utcnow)


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
    over_budget: Literal["local"] = Field(
        default="local", description="what a cloud job that would go past the budget does: route local")
    changed_by: str | None = None
    changed_at: datetime = Field(default_factory=utcnow)

    def subject(self) -> str:
        return str(self.company_id)


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
    decided_at: datetime = Field(default_factory=utcnow)


class DeadLettered(Event):
    """A record that could not be decoded or processed, kept with its original bytes and the error."""

    ce_type: ClassVar[str] = "org.manireports.offload.dead-lettered.v1"
    topic: ClassVar[str] = "dead-letters"

    source_topic: str
    source_partition: int
    source_offset: int
    key_b64: str | None
    value_b64: str
    headers: dict[str, str] = Field(default_factory=dict)
    error: str
    stage: str = Field(description="which agent gave up on it")
    dead_lettered_at: datetime = Field(default_factory=utcnow)

    def subject(self) -> str:
        return f"{self.source_topic}/{self.source_partition}/{self.source_offset}"


EVENT_TYPES: tuple[type[Event], ...] = (
    JobRequested,
    JobRejected,
    JobAccepted,
    BatchDispatched,
    BatchesDispatched,
    RecipientSent,
    RecipientFailed,
    CertificateIssued,
    BatchCompleted,
    JobFellBackToLocal,
    JobCompleted,
    CompanySettingsChanged,
    DeadLettered,
    JobOverBudget,
)
BY_CE_TYPE: dict[str, type[Event]] = {cls.ce_type: cls for cls in EVENT_TYPES}


# === Requests from the API ==========================================================================


class JobCancelled(Event):
    """Someone asked that a job's remaining recipients not be served; what was already sent stays sent."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.cancelled.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    company_id: int | None = None
    requested_by: str = Field(description="the API key id (or operator) that asked; never a secret")
    reason: str | None = Field(default=None, max_length=500)
    cancelled_at: datetime = Field(default_factory=utcnow)


class JobRetryRequested(Event):
    """Someone asked to serve a job's failed recipients again (a new run); the worker decides who qualifies."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.retry-requested.v1"
    topic: ClassVar[str] = "jobs"

    job_id: str
    company_id: int | None = None
    requested_by: str = Field(description="the API key id (or operator) that asked; never a secret")
    only_retryable: bool = Field(default=True, description="true: only failures marked retryable; false: all")
    requested_at: datetime = Field(default_factory=utcnow)


EVENT_TYPES = (*EVENT_TYPES, JobCancelled, JobRetryRequested)
BY_CE_TYPE.update({cls.ce_type: cls for cls in (JobCancelled, JobRetryRequested)})


# === Callbacks to Moodle ============================================================================
CallbackName = Literal["started", "progress", "completed"]


class CallbackDelivered(Event):
    """Moodle answered a signed callback with 2xx: this callback is done."""

    ce_type: ClassVar[str] = "org.manireports.offload.callback.delivered.v1"
    topic: ClassVar[str] = "callbacks"

    job_id: str
    callback_id: str = Field(description="job_id:run:name, the same for every attempt of one callback")
    event: CallbackName
    run: int = 0
    milestone: int | None = Field(default=None, description="percent, for progress callbacks")
    attempt: int = Field(ge=1)
    status: int = Field(description="Moodle's HTTP status")
    duration_ms: int
    delivered_at: datetime = Field(default_factory=utcnow)


class CallbackFailed(Event):
    """One attempt that did not reach Moodle; next_attempt_at is when it is tried again, None when given up."""

    ce_type: ClassVar[str] = "org.manireports.offload.callback.failed.v1"
    topic: ClassVar[str] = "callbacks"

    job_id: str
    callback_id: str = Field(description="job_id:run:name, the same for every attempt of one callback")
    event: CallbackName
    run: int = 0
    milestone: int | None = None
    attempt: int = Field(ge=1)
    status: int | None = Field(default=None, description="Moodle's HTTP status; None when no answer came")
    error: str = Field(max_length=2000)
    next_attempt_at: datetime | None = None
    duration_ms: int | None = None
    failed_at: datetime = Field(default_factory=utcnow)


EVENT_TYPES = (*EVENT_TYPES, CallbackDelivered, CallbackFailed)
BY_CE_TYPE.update({cls.ce_type: cls for cls in (CallbackDelivered, CallbackFailed)})


# === Provider webhooks ==============================================================================
class _ProviderReport(Event):
    """What a provider reported about one message after it was sent, matched to the job's recipient."""

    topic: ClassVar[str] = "outcomes"

    job_id: str
    userid: int
    email: str
    provider: EmailProviderName
    message_id: str | None = Field(default=None, description="our deterministic Message-ID")
    provider_message_id: str | None = None
    provider_event_id: str = Field(description="the provider's id of this report; repeats are the same report")
    detail: str | None = Field(default=None, max_length=2000)
    occurred_at: datetime
    received_at: datetime = Field(default_factory=utcnow)


class RecipientDelivered(_ProviderReport):
    """The provider handed the message to the recipient's mail server."""

    ce_type: ClassVar[str] = "org.manireports.offload.recipient.delivered.v1"


class RecipientBounced(_ProviderReport):
    """The recipient's mail server refused the message; permanent bounces should not be retried."""

    ce_type: ClassVar[str] = "org.manireports.offload.recipient.bounced.v1"

    permanent: bool = True


class RecipientComplained(_ProviderReport):
    """The recipient marked the message as spam."""

    ce_type: ClassVar[str] = "org.manireports.offload.recipient.complained.v1"


EVENT_TYPES = (*EVENT_TYPES, RecipientDelivered, RecipientBounced, RecipientComplained)
BY_CE_TYPE.update({cls.ce_type: cls for cls in (RecipientDelivered, RecipientBounced, RecipientComplained)})


# --- provider health (topic offload.provider-health, keyed provider:account:region) ------------------------
class _ProviderCircuit(Event):
    """A worker's circuit breaker for one cloud provider account changed state."""

    topic: ClassVar[str] = "provider-health"
    provider: str
    account: str = Field(description="a label of the credentials used (never a key id): 'default' or 'key-<hash>'")
    region: str
    worker: str = Field(description="the process whose breaker this is (breakers are per worker process)")

    def subject(self) -> str:
        return f"{self.provider}:{self.account}:{self.region}"


class ProviderCircuitOpened(_ProviderCircuit):
    """Consecutive failures opened the circuit: batches go to the local relay until the cool-down ends."""

    ce_type: ClassVar[str] = "org.manireports.offload.provider.circuit-opened.v1"
    reason: str
    consecutive_failures: int
    cooldown_seconds: float


class ProviderCircuitClosed(_ProviderCircuit):
    """A probe got through: batches use the provider again."""

    ce_type: ClassVar[str] = "org.manireports.offload.provider.circuit-closed.v1"
    reason: str
    open_seconds: float


EVENT_TYPES = (*EVENT_TYPES, ProviderCircuitOpened, ProviderCircuitClosed)
BY_CE_TYPE.update({cls.ce_type: cls for cls in (ProviderCircuitOpened, ProviderCircuitClosed)})


# --- company email templates (topic offload.templates, keyed company:template_id, kept forever) -------------
class _TemplateEvent(Event):
    """Something that happened to one company's email template of one id."""

    topic: ClassVar[str] = "templates"

    company_id: int = Field(ge=0)
    template_id: TemplateId

    def subject(self) -> str:
        return f"{self.company_id}:{self.template_id}"


class TemplatePublished(_TemplateEvent):
    """A new version of a company's own email template, validated before it was published.

    Jobs of that company naming ``template_id`` use its latest version instead of the built-in template; a
    job keeps the version it was accepted with (``JobAccepted.template_version``) for all its batches and runs.
    """

    ce_type: ClassVar[str] = "org.manireports.offload.template.published.v1"

    version: int = Field(ge=1, description="1, 2, … per company and template id")
    subject_template: str = Field(min_length=1, max_length=2000, description="Jinja2 source of the subject line")
    html: str = Field(default="", max_length=4 * 1024 * 1024, description="Jinja2 source of the HTML part")
    text: str = Field(default="", max_length=4 * 1024 * 1024, description="Jinja2 source of the text part")
    variables: list[str] = Field(
        default_factory=list, description="the names the template reads beyond the learner's own fields")
    sha256: str = Field(description="of subject, html and text: tells versions with the same content apart")
    description: str | None = Field(default=None, max_length=500)
    published_by: str | None = Field(default=None, description="the API key id that published it; never a secret")
    published_at: datetime = Field(default_factory=utcnow)


class TemplateRetired(_TemplateEvent):
    """A company's own template of this id no longer applies: new jobs use the built-in one again.

    Versions stay in the log, so a job accepted with one keeps rendering it; publishing again revives the id.
    """

    ce_type: ClassVar[str] = "org.manireports.offload.template.retired.v1"

    version: int = Field(ge=1, description="the latest version when it was retired")
    reason: str | None = Field(default=None, max_length=500)
    retired_by: str | None = Field(default=None, description="the API key id that retired it; never a secret")
    retired_at: datetime = Field(default_factory=utcnow)


EVENT_TYPES = (*EVENT_TYPES, TemplatePublished, TemplateRetired)
BY_CE_TYPE.update({cls.ce_type: cls for cls in (TemplatePublished, TemplateRetired)})
