"""The worker's copy of every company's suppression list, and the rule that holds a batch's learners back.

Where the list lives: a Faust global table (``suppressions``, key ``company:userid:scope``), fed by the
apply-suppressions agent from the ``suppressions`` topic. Every worker holds the whole table, so checking a
learner is a dictionary lookup in memory (three per learner at most, no network); the table's compacted
changelog brings it back after a restart without re-reading the topic. See docs/suppression.md.

Which mail a job is (bulk or transactional) is decided once, by the route agent (``mail_category``), and
carried on every batch.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from config.settings import Settings
from schemas.events import BatchDispatched, JobRequested, MailCategory, Recipient
from schemas.events.suppression import (
    ALL_BULK,
    ALL_MAIL,
    RecipientSuppressed,
    RecipientUnsubscribed,
    SuppressionAdded,
    SuppressionRemoved,
    SuppressionSource,
    suppression_key,
)
from streams.batchwork import OutcomeRecorder

log = logging.getLogger(__name__)


def mail_category(job: JobRequested, settings: Settings) -> tuple[MailCategory, str | None]:
    """(category, list id) of a job. Certificate jobs (and the mail telling learners of their certificate) are
    transactional; an email job says so itself, or is transactional when its template is one of
    ``OFFLOAD_TRANSACTIONAL_TEMPLATES`` (password mail and the like), else bulk. A bulk job's list is its
    ``list_id``, else its template id."""
    if job.type == "certificate":
        return "transactional", None
    category: MailCategory = job.category or (
        "transactional" if job.template_id in settings.transactional_templates else "bulk")
    return category, (job.list_id or job.template_id) if category == "bulk" else None


def scopes_for(category: MailCategory | None, list_id: str | None) -> tuple[str, ...]:
    """The entries that stop a message: '*' always; for bulk mail also 'bulk' and the message's own list."""
    if category != "bulk":
        return (ALL_MAIL,)
    return (ALL_MAIL, ALL_BULK, list_id) if list_id else (ALL_MAIL, ALL_BULK)


@dataclass(frozen=True, slots=True)
class SuppressionEntry:
    """One table value: why the learner is on the list and, for a bounce, which address bounced."""

    source: SuppressionSource
    reason: str
    email: str | None = None  # set: the entry stops mail to this address only (a hard bounce)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "reason": self.reason, "email": self.email}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SuppressionEntry:
        unknown = set(raw) - {"source", "reason", "email"}
        if unknown:
            raise ValueError(f"suppressions: unknown field(s) {sorted(unknown)} in stored value")
        return cls(raw["source"], raw["reason"], raw["email"])

    def stops(self, address: str) -> bool:
        return self.email is None or self.email.strip().lower() == address.strip().lower()


class SuppressionList:
    """Reads and writes the suppressions table."""

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table

    def apply(self, event: RecipientUnsubscribed | SuppressionAdded | SuppressionRemoved) -> None:
        key = event.subject()
        if isinstance(event, SuppressionRemoved):
            if self.table.get(key) is not None:
                del self.table[key]  # a tombstone in the changelog
            return
        if isinstance(event, RecipientUnsubscribed):
            entry = SuppressionEntry("unsubscribe", f"unsubscribed from {event.list_id} ({event.method})")
        else:
            entry = SuppressionEntry(event.source, event.reason, event.email if event.source == "bounce" else None)
        self.table[key] = entry.to_dict()

    def find(self, company_id: int, recipient: Recipient,
             scopes: tuple[str, ...]) -> tuple[str, SuppressionEntry] | None:
        for scope in scopes:
            stored = self.table.get(suppression_key(company_id, recipient.userid, scope))
            if stored:
                entry = SuppressionEntry.from_dict(stored)
                if entry.stops(recipient.email):
                    return scope, entry
        return None

    async def hold_back(self, batch: BatchDispatched, recipients: list[Recipient],
                        recorder: OutcomeRecorder) -> list[Recipient]:
        """Record RecipientSuppressed for the learners the list stops; return the others, to be sent."""
        if batch.type != "email":
            return recipients  # certificates are not mail; their notification is transactional and checked there
        scopes = scopes_for(batch.category, batch.list_id)
        send: list[Recipient] = []
        for recipient in recipients:
            found = self.find(batch.company_id, recipient, scopes)
            if found is None:
                send.append(recipient)
                continue
            scope, entry = found
            await recorder.record(RecipientSuppressed(
                job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no, userid=recipient.userid,
                email=recipient.email, source=entry.source, scope=scope, reason=entry.reason[:600],
            ))
        if len(send) < len(recipients):
            log.info("job %s batch %d: %d learner(s) on the suppression list not sent", batch.job_id,
                     batch.batch_no, len(recipients) - len(send))
        return send
