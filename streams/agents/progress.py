"""track-progress: the life of each job after routing — batches done, completion, cancellation, retries.

Batches report once each (BatchCompleted); a batch reported twice (processed again after a crash) is counted
once, because the table remembers which batch numbers of which run are done. A retry serves the learners
still failed as a new run, once every earlier run has completed; a cancel makes every worker fail the
batches of the job that have not started yet (a later retry may serve those learners).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import faust

from schemas.envelope import UndecodableRecord, decode
from schemas.events import (
    BatchCompleted,
    BatchDispatched,
    BatchesDispatched,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobPaused,
    JobResumed,
    JobRetryRequested,
    Recipient,
)
from schemas.intake import batches
from streams.context import StreamContext
from streams.cost import job_cost
from streams.state import BatchFailures, JobProgress, choose, failures_key, is_job_key, locations_key

log = logging.getLogger(__name__)


class ProgressTracker:
    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx

    async def handle(self, message: faust.types.Message) -> None:
        try:
            event = decode(message.value, message.headers)
        except UndecodableRecord as exc:
            await self.ctx.dead_letter(message, str(exc), "track-progress")
            return
        if not isinstance(event, JobAccepted | BatchCompleted | BatchesDispatched | JobCancelled | JobRetryRequested
                          | JobPaused | JobResumed):
            return
        state = self._state(event.job_id)
        if isinstance(event, JobPaused | JobResumed):
            await self._pause_or_resume(event, state)
            return
        if isinstance(event, BatchesDispatched):
            self.ctx.job_progress[locations_key(event.job_id, event.run)] = {
                "batches": [[partition, offset] for partition, offset in event.locations]}
            self._save(event.job_id, state)
            return
        if isinstance(event, JobAccepted):
            if state.total is None:
                state.total = event.total_recipients
            state.runs.setdefault(0, event.batch_count)
            await self._advance(event.job_id, state, run=0)
        elif isinstance(event, BatchCompleted):
            first_report = state.record_batch(event.run, event.batch_no, event.batch_count, event.succeeded,
                                              event.failed, event.sent_by, event.suppressed)
            if first_report and event.failures:
                self.ctx.job_failures[failures_key(event.job_id, event.run, event.batch_no)] = BatchFailures(
                    event.source_partition, event.source_offset,
                    tuple((f.userid, f.retryable) for f in event.failures),
                ).to_dict()
            await self._advance(event.job_id, state, run=event.run)
        elif isinstance(event, JobCancelled):
            state.cancelled = True
            self.ctx.cancelled_jobs[event.job_id] = True
            self._save(event.job_id, state)
            log.info("job %s cancelled by %s", event.job_id, event.requested_by)
            if self.ctx.paused_jobs.get(event.job_id):  # the batches held back now fail as cancelled
                self.ctx.paused_jobs.pop(event.job_id, None)
                await self._send_unfinished_again(event.job_id, state)
        elif not state.runs:
            log.warning("retry of unknown job %s ignored", event.job_id)
        else:
            # Kept until every run has completed, so a retry asked for mid-run serves that run's failures too.
            state.retry_pending = event.only_retryable
            await self._advance(event.job_id, state, run=None)

    async def _pause_or_resume(self, event: JobPaused | JobResumed, state: JobProgress) -> None:
        if isinstance(event, JobPaused):
            if not state.all_runs_completed():
                self.ctx.paused_jobs[event.job_id] = True
                log.warning("job %s paused, its batches wait: %s", event.job_id, event.reason)
            return
        if not self.ctx.paused_jobs.get(event.job_id):
            log.info("resume of job %s ignored: it is not paused", event.job_id)
            return
        # Another worker may still see the job paused (its copy of the global table lags by the changelog) and hold
        # a batch sent again here once more: the stall sweeper sends it again once the job makes no progress.
        self.ctx.paused_jobs.pop(event.job_id, None)
        log.info("job %s resumed by %s", event.job_id, event.requested_by)
        await self._send_unfinished_again(event.job_id, state)
        self._save(event.job_id, state)

    async def _send_unfinished_again(self, job_id: str, state: JobProgress) -> None:
        """Every batch of an unfinished run not yet reported done, sent again from where it lies in the log
        (safe: a batch already done only repeats its BatchCompleted, one half done resumes from its outcomes)."""
        for run in state.runs:
            if run in state.completed_runs:
                continue
            for _, partition, offset in state.unfinished_batches(run, run_locations(self.ctx, job_id, state, run)):
                await self.ctx.publisher.send_and_wait(await self.ctx.ledger.fetch("batches", partition, offset))

    def _state(self, job_id: str) -> JobProgress:
        current = self.ctx.job_progress.get(job_id)
        return JobProgress.from_dict(current) if current else JobProgress()

    def _save(self, job_id: str, state: JobProgress) -> None:
        state.touched = time.time()  # last sign of life, for the stall sweeper
        # Assign a new value: Faust writes the changelog on assignment, not on mutation.
        self.ctx.job_progress[job_id] = state.to_dict()

    def _failures(self, job_id: str, run: int, batch_no: int) -> BatchFailures | None:
        stored = self.ctx.job_failures.get(failures_key(job_id, run, batch_no))
        return BatchFailures.from_dict(stored) if stored else None

    async def _advance(self, job_id: str, state: JobProgress, run: int | None) -> None:
        totals = state.run_totals(run) if run is not None else None
        if run is not None and totals is not None:
            succeeded, failed, suppressed = totals
            await self.ctx.publisher.send_and_wait(JobCompleted(
                job_id=job_id, run=run, total=succeeded + failed + suppressed, succeeded=succeeded, failed=failed,
                suppressed=suppressed,
                cancelled=state.cancelled, estimated_cost=job_cost(self.ctx.settings, state),
                currency=self.ctx.settings.currency,
            ))
            state.completed_runs.append(run)
            log.info("job %s run %d completed: %d succeeded, %d failed", job_id, run, succeeded, failed)
        if state.retry_pending is not None and state.all_runs_completed():
            await self._start_retry(job_id, state, only_retryable=state.retry_pending)
            state.retry_pending = None
        self._save(job_id, state)

    async def _start_retry(self, job_id: str, state: JobProgress, *, only_retryable: bool) -> None:
        def failures_of(run: int, batch: int) -> tuple[tuple[int, bool], ...]:
            found = self._failures(job_id, run, batch)
            return found.failures if found else ()

        chosen = choose(state.current_failures(failures_of), only_retryable=only_retryable)
        if not chosen:
            log.info("retry of job %s: nobody to serve again", job_id)
            return
        wanted: dict[tuple[int, int], set[int]] = defaultdict(set)
        for userid, failure in chosen.items():
            wanted[(failure.run, failure.batch_no)].add(userid)
        recipients: list[Recipient] = []
        source: BatchDispatched | None = None
        for (run, batch_no), userids in sorted(wanted.items()):
            where = self._failures(job_id, run, batch_no)
            if where is None or where.source_partition is None or where.source_offset is None:
                log.warning("retry of job %s: batch %d of run %d has no source record", job_id, batch_no, run)
                continue
            dispatched = await self.ctx.ledger.fetch("batches", where.source_partition, where.source_offset)
            if not isinstance(dispatched, BatchDispatched):
                continue
            source = source or dispatched
            recipients.extend(r for r in dispatched.recipients if r.userid in userids)
        if source is None or not recipients:
            return
        if state.cancelled:  # before dispatching: serving them again is the opposite of cancelling
            state.cancelled = False
            self.ctx.cancelled_jobs.pop(job_id, None)
        new_run = state.next_run()
        chunks = list(batches(sorted(recipients, key=lambda r: r.userid), self.ctx.settings.job_batch_size))
        locations = await self.ctx.publisher.send_all(
            BatchDispatched(
                job_id=job_id, run=new_run, batch_no=number, batch_count=len(chunks), type=source.type,
                company_id=source.company_id, route=source.route, provider=source.provider,
                template_id=source.template_id, template_data=source.template_data,
                template_data_at=source.template_data_at, recipients=chunk,
                notify_template_id=source.notify_template_id, category=source.category, list_id=source.list_id,
                # The run serves the same message as the first: the template chosen when the job was accepted.
                template_source=source.template_source, template_version=source.template_version,
                content=source.content,
            )
            for number, chunk in enumerate(chunks)
        )
        self.ctx.job_progress[locations_key(job_id, new_run)] = {"batches": [list(where) for where in locations]}
        state.add_run(new_run, len(locations), [r.userid for r in recipients])
        log.info("job %s retry run %d: %d learners in %d batches", job_id, new_run, len(recipients), len(chunks))


def run_locations(ctx: StreamContext, job_id: str, state: JobProgress, run: int) -> list[tuple[int, int]]:
    """Where the run's batches lie in the log, batch by batch; empty until its BatchesDispatched is read."""
    stored = ctx.job_progress.get(locations_key(job_id, run))
    if stored is None:
        return state.locations.get(run, [])  # an older worker kept them in the job's value
    return [(int(partition), int(offset)) for partition, offset in stored["batches"]]


class StallSweeper:
    """Sends again the batches of a run that has made no progress for a while.

    faust-streaming 0.15 was seen to lose the first records it fetched for a partition when a worker restarted
    (it starts fetching before it seeks to the committed offsets), so a batch can be skipped and its job stall.
    Sending a batch again is always safe: a batch already done only repeats its BatchCompleted, one in flight
    queues behind itself in its partition, one half done resumes from its recorded outcomes.
    """

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self._last: dict[tuple[str, int], float] = {}  # in memory: after a restart, one more re-send is harmless

    async def sweep(self) -> None:
        after = self.ctx.settings.stall_redispatch_seconds
        now = time.time()
        for job_id, stored in list(self.ctx.job_progress.items()):
            if not stored or not is_job_key(job_id):
                continue
            state = JobProgress.from_dict(stored)
            touched = state.touched if state.touched is not None else now
            if state.cancelled or self.ctx.paused_jobs.get(job_id) or now - touched < after:
                continue
            for run in state.runs:
                if run in state.completed_runs or now - self._last.get((job_id, run), 0) < after:
                    continue
                missing = state.unfinished_batches(run, run_locations(self.ctx, job_id, state, run))
                if not missing:
                    continue
                self._last[(job_id, run)] = now
                log.warning("job %s run %s made no progress for %.0f s: sending %d unfinished batches again",
                            job_id, run, now - touched, len(missing))
                for _, partition, offset in missing:
                    await self.ctx.publisher.send_and_wait(await self.ctx.ledger.fetch("batches", partition, offset))


def register(app: faust.App, ctx: StreamContext) -> None:
    tracker = ProgressTracker(ctx)
    sweeper = StallSweeper(ctx)

    @app.timer(max(1.0, ctx.settings.stall_redispatch_seconds / 4))
    async def sweep_stalled_runs() -> None:
        await ctx.ensure_started()
        try:
            await sweeper.sweep()
        except Exception:  # a sweep that fails is tried again at the next tick
            log.exception("stall sweep failed")

    @app.agent(ctx.jobs, name="track-progress", concurrency=1)
    async def track_progress(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await ctx.guarded(event.message, "track-progress", tracker.handle)
