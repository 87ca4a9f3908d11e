"""Suppression events: who must not be mailed by a company, and why (docs/suppression.md).

A company's suppression list is built from the ``suppressions`` topic (kept forever, keyed
``company:userid:scope``): one-click unsubscribes (RecipientUnsubscribed), hard bounces and complaints reported
by the providers' webhooks and entries made by an admin (SuppressionAdded), and removals (SuppressionRemoved).
The worker holds the current list in a Faust table fed by these events; the projector keeps it in Postgres.

A scope says which mail an entry stops: ``*`` every message of the company (hard bounces, admin entries by
default), ``bulk`` every bulk message (complaints), or one list id (an unsubscribe from that list). A learner
of a job whose entry applies is not sent: their outcome is RecipientSuppressed, with the reason.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field, StringConstraints

from schemas.events.base import Event, utcnow
from schemas.events.outcomes import RecipientOutcome

ALL_MAIL = "*"
ALL_BULK = "bulk"
# A list id (template-id shaped), or one of the two wide scopes above.
Scope = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^(\*|[a-z0-9_-]+)$")]
SuppressionSource = Literal["unsubscribe", "bounce", "complaint", "manual"]


def suppression_key(company_id: int, userid: int, scope: str) -> str:
    return f"{company_id}:{userid}:{scope}"


class _SuppressionEvent(Event):
    topic: ClassVar[str] = "suppressions"

    company_id: int = Field(ge=0)
    userid: int = Field(ge=1)

    def subject(self) -> str:
        return suppression_key(self.company_id, self.userid, self.scope_of())

    def scope_of(self) -> str:
        raise NotImplementedError


class RecipientUnsubscribed(_SuppressionEvent):
    """A learner asked, through the one-click link of a bulk message, to get no more mail of that list."""

    ce_type: ClassVar[str] = "org.manireports.offload.recipient.unsubscribed.v1"

    list_id: Scope = Field(description="the list (category) of the message whose link was used")
    method: Literal["one-click", "confirmation-page"] = Field(
        description="one-click: the mail client's RFC 8058 POST; confirmation-page: the button of the GET page")
    unsubscribed_at: AwareDatetime = Field(default_factory=utcnow)

    def scope_of(self) -> str:
        return self.list_id


class SuppressionAdded(_SuppressionEvent):
    """A learner put on a company's suppression list by a provider report or an admin."""

    ce_type: ClassVar[str] = "org.manireports.offload.suppression.added.v1"

    scope: Scope = Field(default=ALL_MAIL, description="'*' every message, 'bulk' every bulk message, or a list id")
    source: Literal["bounce", "complaint", "manual"]
    reason: str = Field(min_length=1, max_length=500)
    email: str | None = Field(
        default=None, max_length=254,
        description="bounces: the address that bounced; the entry stops mail to that address only")
    job_id: str | None = Field(default=None, description="the job whose message was reported, for reports")
    provider_event_id: str | None = Field(default=None, description="the provider's id of the report")
    changed_by: str | None = Field(default=None, description="the API key id of the admin; never a secret")
    added_at: AwareDatetime = Field(default_factory=utcnow)

    def scope_of(self) -> str:
        return self.scope


class SuppressionRemoved(_SuppressionEvent):
    """An admin took a learner off a company's suppression list (one scope), saying why."""

    ce_type: ClassVar[str] = "org.manireports.offload.suppression.removed.v1"

    scope: Scope = ALL_MAIL
    reason: str = Field(min_length=1, max_length=500)
    changed_by: str | None = Field(default=None, description="the API key id of the admin; never a secret")
    removed_at: AwareDatetime = Field(default_factory=utcnow)

    def scope_of(self) -> str:
        return self.scope


class RecipientSuppressed(RecipientOutcome):
    """A learner of a job not sent because the company's suppression list holds them: a terminal outcome,
    counted apart from sent and failed, and never served by a retry."""

    ce_type: ClassVar[str] = "org.manireports.offload.recipient.suppressed.v1"

    source: SuppressionSource
    scope: Scope
    reason: str = Field(max_length=600)
    suppressed_at: AwareDatetime = Field(default_factory=utcnow)


