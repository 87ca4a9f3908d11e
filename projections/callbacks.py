"""callbacks: one row per callback to Moodle with its latest attempt (the original design's callbacks table).

Attempts arrive in order per job (the callbacks topic is keyed by job id), but a callback delivered twice (a
worker that died before recording its success) must not turn back into "failed": a delivered row stays
delivered, and an older attempt never overwrites a newer one.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import AsyncCursor

from projections.base import Applied
from schemas.events import CallbackDelivered, CallbackFailed

DDL = """
CREATE TABLE IF NOT EXISTS callbacks (
    callback_id     text PRIMARY KEY,
    job_id          text NOT NULL,
    event           text NOT NULL,
    run             int  NOT NULL DEFAULT 0,
    milestone       int,
    attempt         int  NOT NULL,
    status          text NOT NULL,
    http_status     int,
    error           text,
    next_attempt_at timestamptz,
    delivered_at    timestamptz,
    duration_ms     int,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS callbacks_job ON callbacks (job_id);
CREATE INDEX IF NOT EXISTS callbacks_retrying ON callbacks (next_attempt_at) WHERE status = 'retrying';
"""

_UPSERT = """
INSERT INTO callbacks AS c (callback_id, job_id, event, run, milestone, attempt, status, http_status, error,
                            next_attempt_at, delivered_at, duration_ms, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (callback_id) DO UPDATE SET
  attempt = EXCLUDED.attempt, status = EXCLUDED.status, http_status = EXCLUDED.http_status,
  error = EXCLUDED.error, next_attempt_at = EXCLUDED.next_attempt_at,
  delivered_at = COALESCE(c.delivered_at, EXCLUDED.delivered_at), duration_ms = EXCLUDED.duration_ms,
  updated_at = EXCLUDED.updated_at
WHERE c.status <> 'delivered' AND (EXCLUDED.attempt >= c.attempt OR EXCLUDED.status = 'delivered')
"""


async def apply(cur: AsyncCursor, events: Sequence[Applied]) -> None:
    for position, event in events:
        if event.topic != CallbackDelivered.topic:  # the callbacks topic carries both kinds
            continue
        if isinstance(event, CallbackDelivered):
            await cur.execute(_UPSERT, (
                event.callback_id, event.job_id, event.event, event.run, event.milestone, event.attempt,
                "delivered", event.status, None, None, event.delivered_at, event.duration_ms, position.timestamp))
        elif isinstance(event, CallbackFailed):
            status = "retrying" if event.next_attempt_at is not None else "gave_up"
            await cur.execute(_UPSERT, (
                event.callback_id, event.job_id, event.event, event.run, event.milestone, event.attempt,
                status, event.status, event.error, event.next_attempt_at, None, event.duration_ms,
                position.timestamp))
