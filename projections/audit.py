"""audit_log: every job-level event, settings change and dead letter, once each, with its place in the log."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import AsyncCursor

from projections.base import Applied
from schemas.events import (
    BatchCompleted,
    BatchDispatched,
    CallbackDelivered,
    CallbackFailed,
    RecipientBounced,
    RecipientComplained,
    RecipientDelivered,
    RecipientOutcome,
)

DDL = """
CREATE TABLE IF NOT EXISTS audit_log (
    id          bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    topic       text   NOT NULL,
    partition   int    NOT NULL,
    "offset"    bigint NOT NULL,
    event_type  text   NOT NULL,
    subject     text   NOT NULL,
    company_id  int,
    actor       text,
    detail      jsonb  NOT NULL,
    UNIQUE (topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS audit_log_subject ON audit_log (subject, id);
"""

# Per-recipient, per-batch and callback events live in job_recipients/job_batches/callbacks; the audit log keeps
# the rest.
_SKIPPED = (BatchDispatched, BatchCompleted, RecipientOutcome, CallbackDelivered, CallbackFailed,
            RecipientDelivered, RecipientBounced, RecipientComplained)


async def apply(cur: AsyncCursor, events: Sequence[Applied]) -> None:
    # getattr with a default: the audit log takes every event type, and company_id, changed_by and createdby
    # are each carried by only some of them.
    rows = [
        (pos.timestamp, pos.topic, pos.partition, pos.offset, event.ce_type, event.subject(), getattr(event, "company_id", None),
         getattr(event, "changed_by", None) or (str(event.createdby) if getattr(event, "createdby", None) else None),
         event.model_dump_json(exclude={"recipients", "template_data"}))
        for pos, event in events
        if not isinstance(event, _SKIPPED)
    ]
    if rows:
        await cur.executemany(
            """INSERT INTO audit_log (occurred_at, topic, partition, "offset", event_type, subject, company_id, actor,
                                      detail)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING""",
            rows,
        )
