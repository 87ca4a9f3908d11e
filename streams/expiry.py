"""expire-finished-jobs: the worker forgets a job's working state N days after the job finished.

The worker's tables (job progress, failures kept for retries, batch progress, callbacks, cancellations) are
working state: the log and the read models keep the history. Without expiry they grow with every job ever
run, in memory (the ``memory://`` store) and in the changelogs a restarted worker reads back.

How, without touching the agents that own those tables:

1. ``note-finished-jobs`` (an agent on the jobs topic) records when each job finished — its latest run's
   JobCompleted, or its JobRejected — in ``finished-jobs``, a global table every worker holds; a new run
   (BatchesDispatched of run > 0) clears the note until that run completes too.
2. A timer (every ``job_expiry_interval_seconds``) finds the jobs finished more than
   ``finished_job_retention_days`` ago and deletes their keys from every table, but only in the changelog
   partitions this worker owns (each worker cleans its own share; standbys follow from the changelog). A
   delete is a tombstone in the key's changelog partition, so compaction drops the key and a restarted worker
   never reads it back.
3. The note itself is dropped a few ticks later, once every worker has had a tick to clean its share.
4. ``company-spend`` (one key per cloud job, ``company:YYYY-MM:job_id``) is read for the current month only;
   the same timer deletes the keys of months before the previous one (the previous month is kept so a
   worker whose clock is a little behind at the turn of the month still sees its spend).

``known-jobs`` is kept on purpose: it is what makes a job id submitted again (Moodle retrying after a
timeout) do nothing, for the life of the system, at ~100 bytes per job. After expiry a retry request for the
job is ignored (the worker logs "retry of unknown job"): retries are promised for N days after a job finished.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import cast

import faust
from faust.types import TP

from eventlog.publisher import partition_for
from schemas.envelope import UndecodableRecord, decode
from schemas.events import BatchesDispatched, JobCompleted, JobRejected
from streams.context import SinglePartitionGlobalTable, StreamContext
from streams.timers import table_timer

log = logging.getLogger(__name__)

TABLE = "finished-jobs"  # changelog {app_id}-finished-jobs-changelog, 1 partition, compacted
SECONDS_PER_DAY = 24 * 3600


def job_of(key: str) -> str:
    """The job id of a table key: keys are ``job_id`` or ``job_id:run:batch`` (job ids have no ':')."""
    return key.split(":", 1)[0]


# Tables keyed by job id or job_id:run:batch, by name (callbacks is created by its own agent module).
# Not here: known-jobs (see above), company-settings (keyed by company), finished-jobs (dropped separately).
EXPIRING_TABLES = ("job-progress", "job-failures", "batch-progress", "callbacks", "cancelled-jobs", "paused-jobs",
                   "delivery-watch")


SPEND_TABLE = "company-spend"


def expired_jobs(finished: Iterable[tuple[str, float]], now: float, retention_seconds: float) -> set[str]:
    return {job_id for job_id, at in finished if at <= now - retention_seconds}


def expired_spend_keys(keys: Iterable[str], now: float) -> list[str]:
    """The ``company:YYYY-MM:job_id`` keys of months before the previous one (UTC) at ``now``."""
    today = datetime.fromtimestamp(now, UTC)
    previous = f"{today.year - 1}-12" if today.month == 1 else f"{today.year}-{today.month - 1:02d}"
    # "YYYY-MM" strings sort like the months they name.
    return [key for key in keys if key.split(":")[1] < previous]


class JobExpiry:
    def __init__(self, ctx: StreamContext, finished: faust.GlobalTable) -> None:
        self.ctx = ctx
        self.finished = finished
        self.retention = ctx.settings.finished_job_retention_days * SECONDS_PER_DAY
        # Long enough for every worker to have ticked at least once after the job expired.
        self.note_kept = self.retention + 3 * ctx.settings.job_expiry_interval_seconds

    def partition_of(self, table: faust.Table, key: str) -> int:
        """The changelog partition the table's owner wrote ``key`` to."""
        if type(table).partition_for_key is not faust.Table.partition_for_key:
            placed = table.partition_for_key(key)  # tables that place keys themselves (by batch key, or in 0)
            if placed is None:
                raise TypeError(f"table {table.name} leaves the partition of {key!r} to the producer")
            return placed
        # Plain tables are written while handling an event of the job's topics, which are keyed by job id.
        return partition_for(job_of(key).encode(), self.ctx.settings.job_partitions)

    async def note(self, message: faust.types.Message) -> None:
        try:
            event = decode(message.value, message.headers)
        except UndecodableRecord:
            return  # track-progress dead-letters it; one report is enough
        if isinstance(event, JobCompleted):
            self.finished[event.job_id] = event.completed_at.timestamp()
        elif isinstance(event, JobRejected):
            self.finished[event.job_id] = event.rejected_at.timestamp()
        elif isinstance(event, BatchesDispatched) and event.run > 0 and event.job_id in self.finished:
            del self.finished[event.job_id]  # a retry run started: the job is not finished any more

    def sweep(self, now: float | None = None) -> dict[str, int]:
        """Delete the expired jobs' keys (and past months' spend) from this worker's partitions; returns table
        name -> keys deleted."""
        now = time.time() if now is None else now
        expired = expired_jobs(self.finished.items(), now, self.retention)
        actives = self.ctx.app.assignor.assigned_actives()
        deleted: dict[str, int] = {}
        for name in EXPIRING_TABLES:
            table = cast(faust.Table, self.ctx.app.tables.get(name))
            if table is not None and expired:
                self._delete(table, [k for k in table.data if job_of(str(k)) in expired], actives, deleted)
        spend = cast(faust.Table, self.ctx.app.tables.get(SPEND_TABLE))
        if spend is not None:
            self._delete(spend, expired_spend_keys([str(k) for k in spend.data], now), actives, deleted)
        if expired and TP(self.finished.changelog_topic.get_topic_name(), 0) in actives:
            for job_id in expired:
                if self.finished[job_id] <= now - self.note_kept:
                    del self.finished[job_id]
        if deleted:
            log.info("expired the state of %d job(s) finished more than %s ago, and past months' spend: %s",
                     len(expired), timedelta(seconds=round(self.retention)), deleted)
        return deleted

    def _delete(self, table: faust.Table, keys: list[str], actives: set[TP], deleted: dict[str, int]) -> None:
        changelog = table.changelog_topic.get_topic_name()
        for key in keys:
            partition = self.partition_of(table, key)
            if TP(changelog, partition) not in actives:
                continue  # another worker owns it (or this is a standby copy): its owner cleans it
            # What `del table[key]` does inside an agent; a timer has no current event to take the
            # partition from, so the tombstone goes to the key's partition explicitly.
            table.send_changelog(partition, key, None, value_serializer="raw")
            del table.data[key]
            deleted[table.name] = deleted.get(table.name, 0) + 1


def register(app: faust.App, ctx: StreamContext) -> JobExpiry:
    s = ctx.settings
    finished = app.tables.add(SinglePartitionGlobalTable(
        app, name=TABLE, beacon=app.tables.beacon, partitions=1, recovery_buffer_size=1,
        standby_buffer_size=1, is_global=True, default=None,  # as app.GlobalTable() sets them
    ))
    expiry = JobExpiry(ctx, cast(faust.GlobalTable, finished))

    # concurrency=1: with more, faust-streaming can commit past an in-flight message (#606).
    @app.agent(ctx.jobs, name="note-finished-jobs", concurrency=1)
    async def note_finished_jobs(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await ctx.guarded(event.message, "note-finished-jobs", expiry.note)

    async def sweep() -> None:
        expiry.sweep()
    table_timer(app, ctx, name="expire-finished-jobs", interval=s.job_expiry_interval_seconds,
                failure="expiring finished jobs", tick=sweep)
    return expiry
