"""audit_log: every job-level event, settings change and dead letter, once each, with its place in the log."""

from __future__ import annotations

import json
from collections.abc import Sequence

from psycopg import AsyncCursor

from projections.base import Applied
from schemas.events import (
    BatchCompleted,
    BatchDispatched,
    CallbackDelivered,
    CallbackFailed,
    Event,
    RecipientBounced,
    RecipientComplained,
    RecipientDelivered,
    RecipientOutcome,
)
from security.callback_urls import redacted

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


def _detail(event: Event) -> str:
    """The event as JSON, without recipients and template data, and with a callback URL's query redacted: an
    event written before the API sealed queries (issue 11) carries Moodle's wstoken in clear, and the sealed form
    is for the worker alone."""
    if "callback_url" not in type(event).model_fields:
        return event.model_dump_json(exclude={"recipients", "template_data"})
    detail = event.model_dump(mode="json", exclude={"recipients", "template_data"})
    detail["callback_url"] = redacted(detail["callback_url"], detail.pop("callback_query_sealed"))
    return json.dumps(detail, separators=(",", ":"))


def _actor(event: Event) -> str | None:
    """Who caused the event, for the events that say: a key id or user that changed something, or Moodle's user."""
    createdby = getattr(event, "createdby", None)
    return getattr(event, "changed_by", None) or (str(createdby) if createdby else None)


async def apply(cur: AsyncCursor, events: Sequence[Applied]) -> None:
    # getattr with a default: the audit log takes every event type, and company_id, changed_by and createdby
    # are each carried by only some of them.
    rows = [
        (pos.timestamp, pos.topic, pos.partition, pos.offset, event.ce_type, event.subject(),
         getattr(event, "company_id", None), _actor(event),
         _detail(event))
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
