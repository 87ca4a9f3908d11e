"""What happened to one learner (topic ``outcomes``): the worker's terminal outcomes of a batch run (sent,
failed), and what a provider reported about a message afterwards (delivered, bounced, complained)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AwareDatetime, Field

from schemas.events.base import EmailProviderName, Event, utcnow


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
    sent_at: AwareDatetime = Field(default_factory=utcnow)
    company_id: int | None = Field(default=None, description="the job's company: the delivery watch applies that "
                                                              "company's pause thresholds")


class RecipientFailed(RecipientOutcome):
    """A recipient that could not be served in this run; retryable says whether a later retry may help."""

    ce_type: ClassVar[str] = "org.manireports.offload.recipient.failed.v1"

    provider: str | None = None
    error: str
    attempts: int
    retryable: bool
    failed_at: AwareDatetime = Field(default_factory=utcnow)


# --- provider webhooks --------------------------------------------------------------------------------------
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
    occurred_at: AwareDatetime
    received_at: AwareDatetime = Field(default_factory=utcnow)


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
