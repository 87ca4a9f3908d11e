"""expire-open-chunked-jobs: a chunked job opened but never committed is closed after a while, saying why.

Without this a client that opened a job (``POST /api/v1/jobs`` with ``"chunked": true``) and then gave up left
it open for ever: its notes in ``job-chunks`` (a few hundred bytes per chunk) and an ``open`` job nobody would
ever serve or reject. Like the finished-job expiry (streams.expiry), a timer on every worker, every
``job_expiry_interval_seconds``, looks at the jobs of the job-requests partitions this worker owns (the table is
partitioned like job-requests, by job id). A job open longer than ``chunked_job_max_open_hours`` (counted from
when its first record reached the log) gets a ChunkedJobExpired record on job-requests, under its key.

The timer decides nothing itself and writes no table: the route agent reads that record in order with the
job's own records (streams.chunked_jobs), so a commit written before it wins, and otherwise the job is rejected
there (JobRejected, code ``chunked_job_not_committed``, which the read model, the API and Moodle's commit
answer show) and its notes are dropped. A record written twice (two ticks before the agent got to it, or a
worker that took the partition over) is harmless: the second finds the job known and is ignored.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import faust
from faust.types import TP

from eventlog.publisher import partition_for
from schemas.events import ChunkedJobExpired, JobOpened
from streams.chunked_jobs import ChunkedJobs, OpenedJob
from streams.context import StreamContext
from streams.ledger import RecordGone
from streams.timers import table_timer

log = logging.getLogger(__name__)


class OpenJobExpiry:
    def __init__(self, ctx: StreamContext, chunked: ChunkedJobs) -> None:
        self.ctx = ctx
        self.chunked = chunked
        self.max_open = ctx.settings.chunked_job_max_open_hours * 3600
        self._written: set[str] = set()  # jobs whose ChunkedJobExpired this process wrote and that are still open
        self._first_seen: dict[str, float] = {}  # notes written before opened_at existed: counted from here

    def owned(self, job_id: str, actives: set[TP]) -> bool:
        changelog = self.chunked.table.changelog_topic.get_topic_name()
        return TP(changelog, partition_for(job_id.encode(), self.ctx.settings.job_partitions)) in actives

    def due(self, now: float, actives: set[TP]) -> list[tuple[str, OpenedJob, float]]:
        """(job id, its note, when it was opened) of every owned open job past the limit, not yet closed here."""
        found = []
        still_open = set()
        for job_id, opened in self.chunked.open_jobs():
            still_open.add(job_id)
            if job_id in self._written or not self.owned(job_id, actives):
                continue
            at = opened.opened_at if opened.opened_at is not None else self._first_seen.setdefault(job_id, now)
            if at <= now - self.max_open:
                found.append((job_id, opened, at))
        self._written &= still_open
        self._first_seen = {j: t for j, t in self._first_seen.items() if j in still_open}
        return found

    async def _company_of(self, job_id: str, opened: OpenedJob) -> int | None:
        """The company of the job's header; None when only chunks came, or the header has left the log."""
        if opened.partition is None or opened.offset is None:
            return None
        try:
            header = await self.ctx.ledger.fetch("job-requests", opened.partition, opened.offset)
        except RecordGone:  # open longer than job-requests keeps records: closed all the same
            return None
        if not isinstance(header, JobOpened) or header.job_id != job_id:
            raise LookupError(f"job-requests[{opened.partition}]@{opened.offset} is not the header of job {job_id}")
        return header.company_id

    async def sweep(self, now: float | None = None) -> int:
        """Write a ChunkedJobExpired for every due job; returns how many."""
        now = time.time() if now is None else now
        due = self.due(now, self.ctx.app.assignor.assigned_actives())
        for job_id, opened, at in due:
            company_id = await self._company_of(job_id, opened)
            await self.ctx.publisher.send_and_wait(ChunkedJobExpired(
                job_id=job_id, company_id=company_id, opened_at=datetime.fromtimestamp(at, UTC),
                max_open_hours=self.ctx.settings.chunked_job_max_open_hours,
                chunks_received=opened.highest_chunk + 1))
            self._written.add(job_id)
            log.warning("chunked job %s open since %s without a commit: closing it", job_id,
                        datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds"))
        return len(due)


def register(app: faust.App, ctx: StreamContext, chunked: ChunkedJobs) -> OpenJobExpiry:
    expiry = OpenJobExpiry(ctx, chunked)


    async def sweep() -> None:
        await expiry.sweep()
    table_timer(app, ctx, name="expire-open-chunked-jobs", interval=ctx.settings.job_expiry_interval_seconds,
                failure="closing chunked jobs left open", tick=sweep)
    return expiry
