"""Jobs waiting for their company's monthly budget (``over_budget: "wait"``), and the timer that lets them go.

How a job waits, and why it is crash safe without new machinery:

1. The router finds that a cloud job would take its company past its monthly budget and that the company's
   setting is to wait. It records ``JobWaitingForBudget`` (the figures and the reason, shown by the API and the
   job page), then notes the wait in ``budget-waits``: job id -> where its JobRequested lies in job-requests
   and since when it waits. No batch exists yet.
2. Every ``budget_recheck_seconds`` each worker looks at the waits in the job-requests partitions it owns
   (the table is keyed, and its changelog partitioned, like job-requests, so the owner of a job's request owns
   its wait), oldest first. It reads each job request back from the log and routes it again with the company's
   settings as they are now: a new month, a larger budget, or a setting that no longer sends the job to the
   cloud lets it go (JobAccepted, batches, as for any job), otherwise it keeps waiting (no new event).
3. The wait is dropped after its batches are out. A crash in between routes the job again at the next tick;
   dispatching a job twice is harmless (batches are keyed job:run:batch and served once, progress counts
   each batch once), as it is for the router itself.

A job cancelled while it waits is dropped here with a cancelled ``JobCompleted``: nobody was served. A job
that waited longer than job-requests keeps its records (``OFFLOAD_FINISHED_JOB_RETENTION_DAYS`` + 7 days,
docs/retention.md) can never be served: it is dropped with ``JobRejected`` (code ``request_expired``), and the
other waits go on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import faust
from faust.types import TP

from eventlog.publisher import partition_for
from resilience.collector import gc_paused
from schemas.events import JobCompleted, JobRejected, JobRequested, Problem
from schemas.intake import validate_request
from streams.context import StreamContext
from streams.log_reader import RecordGone
from streams.state import Stored, _check_keys
from streams.timers import table_timer

log = logging.getLogger(__name__)

TABLE = "budget-waits"  # changelog {app_id}-budget-waits-changelog, job_partitions partitions, compacted


class JobKeyedTable(faust.Table):
    """A table keyed by job id whose changelog partition is the job's job-requests partition, also when it is
    written outside an agent (the release timer has no current event to take the partition from)."""

    def partition_for_key(self, key: str) -> int:
        assert self.partitions is not None  # always given when the table is made
        return partition_for(key.encode(), self.partitions)


@dataclass(frozen=True, slots=True)
class BudgetWait:
    """One waiting job: its company, where its request is in job-requests, and since when it waits."""

    company_id: int
    partition: int
    offset: int
    since: float  # epoch seconds

    def to_dict(self) -> dict[str, Any]:
        return {"company_id": self.company_id, "partition": self.partition, "offset": self.offset,
                "since": self.since}

    @classmethod
    def from_dict(cls, raw: Stored) -> BudgetWait:
        _check_keys(TABLE, raw, ("company_id", "partition", "offset", "since"))
        return cls(int(raw["company_id"]), int(raw["partition"]), int(raw["offset"]), float(raw["since"]))

    @property
    def since_text(self) -> str:
        return f"{datetime.fromtimestamp(self.since, UTC):%Y-%m-%d %H:%M} UTC"


# Routes a job request again: (job, duplicates removed, where the request is, the wait) -> True once dispatched.
Reroute = Callable[[JobRequested, int, tuple[int, int], BudgetWait], Awaitable[bool]]


class ChunkedWaits(Protocol):
    """What the budget timer needs of jobs sent in parts (streams.chunked_jobs.ChunkedJobs)."""

    def waiting_total(self, job_id: str) -> int | None: ...

    async def release(self, job_id: str, wait: BudgetWait) -> bool: ...


def make_table(app: faust.App, partitions: int) -> JobKeyedTable:
    table = JobKeyedTable(app, name=TABLE, beacon=app.tables.beacon, partitions=partitions, default=None)
    return cast(JobKeyedTable, app.tables.add(table))


class BudgetWaits:
    """The waits of this worker's partitions, and letting them go once their budget allows."""

    def __init__(self, ctx: StreamContext, table: JobKeyedTable) -> None:
        self.ctx = ctx
        self.table = table
        self.chunked: ChunkedWaits | None = None  # jobs sent in parts (streams.chunked_jobs), set by the router

    def add(self, job_id: str, wait: BudgetWait) -> None:
        self.table[job_id] = wait.to_dict()

    def owned(self) -> list[tuple[str, BudgetWait]]:
        """Waits in the changelog partitions this worker owns as active, oldest first."""
        actives = self.ctx.app.assignor.assigned_actives()
        changelog = self.table.changelog_topic.get_topic_name()
        found = [(str(job_id), BudgetWait.from_dict(raw)) for job_id, raw in list(self.table.data.items())
                 if raw and TP(changelog, self.table.partition_for_key(str(job_id))) in actives]
        return sorted(found, key=lambda item: item[1].since)

    async def recheck(self, reroute: Reroute) -> int:
        """Route every owned wait again; returns how many were let go (dispatched or dropped)."""
        released = 0
        for job_id, wait in self.owned():
            try:
                released += await self._recheck_one(job_id, wait, reroute)
            except RecordGone as gone:  # one expired request must not hold up the waits after it
                await self._drop_expired(job_id, wait, gone)
                released += 1
        return released

    async def _recheck_one(self, job_id: str, wait: BudgetWait, reroute: Reroute) -> int:
        if self.ctx.cancelled_jobs.get(job_id):
            await self._drop_cancelled(job_id, wait)
            return 1
        if self.chunked is not None and self.chunked.waiting_total(job_id) is not None:
            if await self.chunked.release(job_id, wait):
                del self.table[job_id]
                return 1
            return 0
        value, _headers = await self.ctx.ledger.fetch_record("job-requests", wait.partition, wait.offset)
        with gc_paused():  # as the router's (streams.agents.routing)
            intake = validate_request(value, max_recipients=self.ctx.settings.max_recipients_per_job)
        if intake.job is None or intake.job.job_id != job_id:
            # Cannot happen for a request the router accepted as valid; never serve another job's request.
            log.error("job %s: job-requests[%d]@%d is not its valid request; the wait is dropped", job_id,
                      wait.partition, wait.offset)
            del self.table[job_id]
            return 0
        if await reroute(intake.job, intake.duplicates_removed, (wait.partition, wait.offset), wait):
            del self.table[job_id]
            return 1
        return 0

    async def _drop_expired(self, job_id: str, wait: BudgetWait, gone: RecordGone) -> None:
        message = (f"the job waited for its monthly budget since {wait.since_text}, longer than job-requests "
                   f"keeps requests ({gone}); submit it again")
        await self.ctx.publisher.send_and_wait(JobRejected(
            job_id=job_id, company_id=wait.company_id,
            problems=[Problem(field="job_id", message=message, code="request_expired")]))
        del self.table[job_id]
        log.error("job %s: %s", job_id, message)

    async def _drop_cancelled(self, job_id: str, wait: BudgetWait) -> None:
        total = self.chunked.waiting_total(job_id) if self.chunked is not None else None
        if total is None:
            value, _headers = await self.ctx.ledger.fetch_record("job-requests", wait.partition, wait.offset)
            with gc_paused():
                intake = validate_request(value, max_recipients=self.ctx.settings.max_recipients_per_job)
            total = len(intake.job.recipients) if intake.job is not None else 0
        await self.ctx.publisher.send_and_wait(JobCompleted(
            job_id=job_id, run=0, total=total, succeeded=0, failed=total, cancelled=True,
            estimated_cost=0.0, currency=self.ctx.settings.currency))
        del self.table[job_id]
        log.info("job %s cancelled while it waited for the budget (since %s)", job_id, wait.since_text)


def register(app: faust.App, ctx: StreamContext, waits: BudgetWaits, reroute: Reroute) -> None:
    async def recheck() -> None:
        released = await waits.recheck(reroute)
        if released:
            log.info("%d job(s) waiting for their monthly budget were let go", released)
    table_timer(app, ctx, name="recheck-budget-waits", interval=ctx.settings.budget_recheck_seconds,
                failure="rechecking the jobs waiting for their budget", tick=recheck)
