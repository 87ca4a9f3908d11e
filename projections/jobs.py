"""jobs: one row per job with its route, status and progress counters (the original design's table).

Counters are raised by projections.recipients when a recipient first reaches a terminal state, so they stay
right whatever order the topics are read in; a job row may therefore be created by either module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum

from psycopg import AsyncCursor

from projections.base import Applied
from schemas.events import (
    BatchCompleted,
    BatchDispatched,
    BatchWaitingForDependency,
    BatchWaitingForQuota,
    JobAccepted,
    JobCompleted,
    JobFellBackToLocal,
    JobRejected,
    JobWaitingForBudget,
)
from security.callback_urls import redacted


class JobStatus(StrEnum):
    """A job's status in the read model; the API, the monitoring pages and the CLI all use these."""

    WAITING = "waiting"      # waits for its company's monthly budget, no batch yet (JobWaitingForBudget)
    ACCEPTED = "accepted"    # routed, batches on their way (JobAccepted)
    RUNNING = "running"      # a retry run is under way (its first BatchDispatched)
    COMPLETED = "completed"  # every batch of every run reported (JobCompleted)
    REJECTED = "rejected"    # never accepted (JobRejected)
    CANCELLED = "cancelled"  # stopped on request (JobCompleted with cancelled=true)
    PAUSED = "paused"        # shown, never stored: accepted/running and paused by its bounce rate (api/store.py)


# Statuses a job stays in unless someone acts: cancelling one of these is refused.
FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.REJECTED})

# The status readers are shown (API, pages, CLI; ``j`` is the jobs row): a completed or cancelled job shows as
# running until its counters hold every learner. Its JobCompleted (on `jobs`) can be applied in a poll before
# the last outcomes (on `outcomes`) that raise them, the topics being read in no fixed order, and whoever reads
# "completed" takes the counts beside it as final.
SHOWN_STATUS = f"""CASE WHEN j.status IN ('{JobStatus.COMPLETED.value}', '{JobStatus.CANCELLED.value}')
        AND j.succeeded + j.failed + j.suppressed < j.total_recipients THEN '{JobStatus.RUNNING.value}'
        ELSE j.status END"""

DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id             text PRIMARY KEY,
    type               text,
    company_id         int,
    status             text NOT NULL DEFAULT 'accepted',
    route              text,
    route_reason       text,
    provider           text,
    template_id        text,
    total_recipients   int NOT NULL DEFAULT 0,
    succeeded          int NOT NULL DEFAULT 0,
    failed             int NOT NULL DEFAULT 0,
    duplicates_removed int NOT NULL DEFAULT 0,
    batch_count        int NOT NULL DEFAULT 0,
    batches_done       int NOT NULL DEFAULT 0,
    fell_back          boolean NOT NULL DEFAULT false,
    fallback_reason    text,
    error_message      text,
    problems           jsonb,
    callback_url       text,
    createdby          int,
    timecreated        timestamptz,
    timestarted        timestamptz,
    timecompleted      timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS delivered int NOT NULL DEFAULT 0;   -- provider reports, see recipients
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS bounced int NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS complained int NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS pacing text;                        -- latest batch's pacing
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS estimated_cost double precision;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS currency text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS budget_wait jsonb;                  -- the figures of a budget wait
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS suppressed int NOT NULL DEFAULT 0;  -- on the suppression list, see recipients
CREATE TABLE IF NOT EXISTS job_runs (
    job_id      text NOT NULL,
    run         int  NOT NULL,
    batch_count int  NOT NULL,
    PRIMARY KEY (job_id, run)
);
ALTER TABLE job_runs ADD COLUMN IF NOT EXISTS completed_at timestamptz;  -- the run's JobCompleted
ALTER TABLE job_runs ADD COLUMN IF NOT EXISTS cancelled boolean NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS job_batches (
    job_id       text NOT NULL,
    run          int  NOT NULL,
    batch_no     int  NOT NULL,
    succeeded    int  NOT NULL,
    failed       int  NOT NULL,
    fell_back    boolean NOT NULL,
    completed_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, run, batch_no)
);
CREATE INDEX IF NOT EXISTS jobs_company_created ON jobs (company_id, timecreated DESC);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""


_TOPICS = frozenset(t.topic for t in (JobAccepted, JobRejected, BatchCompleted, BatchWaitingForQuota,
                                       BatchWaitingForDependency, JobFellBackToLocal, BatchDispatched, JobCompleted))
# The job's pacing while a batch of it waits for a dependency (BatchWaitingForDependency); a batch's BatchCompleted
# that says no pacing of its own ends it.
WAITING_FOR = "waiting for "


async def apply(cur: AsyncCursor, events: Sequence[Applied]) -> None:  # noqa: C901 - one branch per event type
    # Each job's status and batch counts are worked out once per poll, after its runs and batches are in:
    # _REFRESH derives them from those rows (and the status it set before), so once at the end leaves what once
    # per event did, for one statement per job instead of one per batch.
    touched: dict[str, None] = {}
    batches: list[tuple] = []
    released: dict[str, None] = {}  # jobs whose "waiting for …" a later BatchCompleted ended
    # Most of a poll is outcomes: one look at the topic each, instead of six isinstance checks.
    for event in [event for _, event in events if event.topic in _TOPICS]:
        if isinstance(event, JobAccepted):
            await _accepted(cur, event)
            touched[event.job_id] = None
        elif isinstance(event, JobWaitingForBudget):
            await _waiting_for_budget(cur, event)
        elif isinstance(event, JobRejected):
            message = "; ".join(f"{p.field}: {p.message}" for p in event.problems)
            await cur.execute(
                """INSERT INTO jobs (job_id, company_id, status, error_message, problems, timecreated, timecompleted)
                   VALUES (%s, %s, 'rejected', %s, %s, %s, %s)
                   ON CONFLICT (job_id) DO UPDATE SET status = 'rejected', error_message = EXCLUDED.error_message,
                       problems = EXCLUDED.problems, timecompleted = EXCLUDED.timecompleted, updated_at = now()
                   WHERE jobs.status = 'waiting'""",  # a wait dropped: its request expired (streams/budget_wait.py)
                (event.job_id, event.company_id, message[:4000],
                 json.dumps([p.model_dump() for p in event.problems]), event.rejected_at, event.rejected_at),
            )
        elif isinstance(event, BatchCompleted):
            batches.append((event.job_id, event.run, event.batch_no, event.succeeded, event.failed, event.fell_back,
                            event.completed_at))
            if event.pacing is not None:
                await _pacing(cur, event.job_id, event.pacing)
            else:
                released[event.job_id] = None
            touched[event.job_id] = None
        elif isinstance(event, BatchWaitingForQuota):  # on `jobs` like BatchCompleted: the later one says it
            await _pacing(cur, event.job_id, f"paused: {event.reason}")
        elif isinstance(event, BatchWaitingForDependency):
            await _pacing(cur, event.job_id, f"{WAITING_FOR}{event.dependency}: {event.reason}")
            released.pop(event.job_id, None)
        elif isinstance(event, JobFellBackToLocal):
            await cur.execute(
                """UPDATE jobs SET fell_back = true, fallback_reason = %s, updated_at = now() WHERE job_id = %s""",
                (event.reason[:1000], event.job_id),
            )
        elif isinstance(event, BatchDispatched) and event.run > 0 and event.batch_no == 0:
            # A retry run: its batches join the job's count (failed learners go back to pending in recipients).
            # Idempotent, so a stalled run whose batches are sent again changes nothing.
            await _note_run(cur, event.job_id, event.run, event.batch_count)
            touched[event.job_id] = None
        elif isinstance(event, JobCompleted):
            await cur.execute(
                """INSERT INTO job_runs (job_id, run, batch_count, completed_at, cancelled) VALUES (%s, %s, 0, %s, %s)
                   ON CONFLICT (job_id, run) DO UPDATE SET
                     completed_at = EXCLUDED.completed_at, cancelled = EXCLUDED.cancelled""",
                (event.job_id, event.run, event.completed_at, event.cancelled),
            )
            if event.estimated_cost is not None:  # the estimate covers every run so far: the latest run's wins
                await cur.execute(
                    """INSERT INTO jobs (job_id, estimated_cost, currency) VALUES (%s, %s, %s)
                       ON CONFLICT (job_id) DO UPDATE SET estimated_cost = EXCLUDED.estimated_cost,
                         currency = EXCLUDED.currency
                       WHERE jobs.estimated_cost IS NULL OR %s >= (SELECT coalesce(max(run), 0) FROM job_runs
                                                                   WHERE job_id = EXCLUDED.job_id)""",
                    (event.job_id, event.estimated_cost, event.currency, event.run))
            touched[event.job_id] = None
    if batches:  # only _REFRESH reads job_batches; a batch reported twice (served again after a crash) counts once
        await cur.executemany("INSERT INTO job_batches VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                              batches)
    for job_id in released:
        await cur.execute("UPDATE jobs SET pacing = NULL WHERE job_id = %s AND pacing LIKE %s",
                          (job_id, f"{WAITING_FOR}%"))
    for job_id in touched:
        await _refresh(cur, job_id)


async def _pacing(cur: AsyncCursor, job_id: str, pacing: str) -> None:
    """What paces the job's sends now (the row may not exist yet: the topics are read in any order)."""
    await cur.execute(
        """INSERT INTO jobs (job_id, pacing) VALUES (%s, %s)
           ON CONFLICT (job_id) DO UPDATE SET pacing = EXCLUDED.pacing""",
        (job_id, pacing[:300]))


async def _note_run(cur: AsyncCursor, job_id: str, run: int, batch_count: int) -> None:
    await cur.execute(
        """INSERT INTO job_runs (job_id, run, batch_count) VALUES (%s, %s, %s)
           ON CONFLICT (job_id, run) DO UPDATE SET batch_count = EXCLUDED.batch_count""",
        (job_id, run, batch_count),
    )


# A job's status, batch count and batches done follow from its runs and batches as recorded so far, not from
# the order events arrive in: the projector reads several topics, and a retry run's JobCompleted (on `jobs`)
# can be read before its BatchDispatched (on `batches`), e.g. when it catches up on a backlog or replays.
# The latest run decides: completed (or cancelled) once its JobCompleted is in, running while it is not.
_REFRESH = """
UPDATE jobs j SET
    batch_count = r.batches,
    status = CASE WHEN r.done_at IS NOT NULL THEN CASE WHEN r.cancelled THEN %(cancelled)s ELSE %(completed)s END
                  WHEN r.last_run > 0 OR j.status IN (%(completed)s, %(cancelled)s) THEN %(running)s
                  ELSE j.status END,
    timecompleted = CASE WHEN r.done_at IS NOT NULL THEN r.done_at
                         WHEN r.last_run > 0 OR j.status IN (%(completed)s, %(cancelled)s) THEN NULL
                         ELSE j.timecompleted END,
    batches_done = CASE WHEN r.done_at IS NOT NULL THEN r.batches
                        ELSE (SELECT count(*) FROM job_batches b WHERE b.job_id = j.job_id) END,
    updated_at = now()
FROM (SELECT sum(batch_count) AS batches, max(run) AS last_run,
             (array_agg(completed_at ORDER BY run DESC))[1] AS done_at,
             (array_agg(cancelled ORDER BY run DESC))[1] AS cancelled
      FROM job_runs WHERE job_id = %(job_id)s) r
WHERE j.job_id = %(job_id)s AND r.last_run IS NOT NULL
"""


async def _refresh(cur: AsyncCursor, job_id: str) -> None:
    await cur.execute(_REFRESH, {"job_id": job_id, "completed": JobStatus.COMPLETED.value,
                                 "cancelled": JobStatus.CANCELLED.value, "running": JobStatus.RUNNING.value})


async def _waiting_for_budget(cur: AsyncCursor, event: JobWaitingForBudget) -> None:
    figures = {"month": event.month, "monthly_budget": event.monthly_budget, "spent": event.spent,
               "estimated_cost": event.estimated_cost, "currency": event.currency,
               "provider": event.provider, "since": event.waiting_since.isoformat()}
    # Before its JobAccepted (same topic and key, so in order); a JobWaitingForBudget seen again after a
    # crash only rewrites the figures.
    await cur.execute(
        """INSERT INTO jobs (job_id, type, company_id, status, route_reason, provider, template_id,
                             total_recipients, createdby, timecreated, budget_wait)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (job_id) DO UPDATE SET budget_wait = EXCLUDED.budget_wait""",
        (event.job_id, event.type, event.company_id, JobStatus.WAITING.value, event.reason[:1000],
         event.provider, event.template_id, event.total_recipients, event.createdby, event.waiting_since,
         json.dumps(figures)),
    )


async def _accepted(cur: AsyncCursor, event: JobAccepted) -> None:
    await cur.execute(
        """INSERT INTO jobs (job_id, type, company_id, status, route, route_reason, provider, template_id,
                             total_recipients, duplicates_removed, batch_count, callback_url, createdby,
                             timecreated)
           VALUES (%s, %s, %s, 'accepted', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (job_id) DO UPDATE SET
             type = EXCLUDED.type, company_id = EXCLUDED.company_id, route = EXCLUDED.route,
             route_reason = EXCLUDED.route_reason, provider = EXCLUDED.provider,
             template_id = EXCLUDED.template_id, total_recipients = EXCLUDED.total_recipients,
             duplicates_removed = EXCLUDED.duplicates_removed, batch_count = EXCLUDED.batch_count,
             callback_url = EXCLUDED.callback_url, createdby = EXCLUDED.createdby,
             timecreated = COALESCE(jobs.timecreated, EXCLUDED.timecreated), updated_at = now()""",
        (event.job_id, event.type, event.company_id, event.route, event.reason, event.provider,
         event.template_id, event.total_recipients, event.duplicates_removed, event.batch_count,
         redacted(event.callback_url, event.callback_query_sealed), event.createdby, event.accepted_at),
    )
    await _note_run(cur, event.job_id, 0, event.batch_count)
    # A job that waited for its budget is accepted now (the wait's figures stay on the row).
    await cur.execute("UPDATE jobs SET status = %s WHERE job_id = %s AND status = %s",
                      (JobStatus.ACCEPTED.value, event.job_id, JobStatus.WAITING.value))
