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
    JobRetryRequested,
    Recipient,
)
from schemas.intake import batches
from streams.context import StreamContext
from streams.retry import all_runs_completed, choose, current_failures

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
        if not isinstance(event, JobAccepted | BatchCompleted | BatchesDispatched | JobCancelled | JobRetryRequested):
            return
        state = self._state(event.job_id)
        if isinstance(event, BatchesDispatched):
            state.setdefault("locations", {})[str(event.run)] = [list(where) for where in event.locations]
            self._save(event.job_id, state)
            return
        if isinstance(event, JobAccepted):
            state.setdefault("total", event.total_recipients)
            state.setdefault("runs", {}).setdefault("0", event.batch_count)
            await self._advance(event.job_id, state, run=0)
        elif isinstance(event, BatchCompleted):
            state.setdefault("runs", {}).setdefault(str(event.run), event.batch_count)
            run_done = state.setdefault("done", {}).setdefault(str(event.run), {})
            if str(event.batch_no) not in run_done:
                run_done[str(event.batch_no)] = [event.succeeded, event.failed]
                if event.failures:
                    self.ctx.job_failures[f"{event.job_id}:{event.run}:{event.batch_no}"] = {
                        "p": event.source_partition, "o": event.source_offset,
                        "f": [[f.userid, f.retryable] for f in event.failures],
                    }
            await self._advance(event.job_id, state, run=event.run)
        elif isinstance(event, JobCancelled):
            state["cancelled"] = True
            self.ctx.cancelled_jobs[event.job_id] = True
            self._save(event.job_id, state)
            log.info("job %s cancelled by %s", event.job_id, event.requested_by)
        elif "runs" not in state:
            log.warning("retry of unknown job %s ignored", event.job_id)
        else:
            # Kept until every run has completed, so a retry asked for mid-run serves that run's failures too.
            state["retry_pending"] = event.only_retryable
            await self._advance(event.job_id, state, run=None)

    def _state(self, job_id: str) -> dict:
        current = self.ctx.job_progress.get(job_id)
        return dict(current) if current else {}

    def _save(self, job_id: str, state: dict) -> None:
        state["touched"] = time.time()  # last sign of life, for the stall sweeper
        # Assign a new value: Faust writes the changelog on assignment, not on mutation.
        self.ctx.job_progress[job_id] = state

    async def _advance(self, job_id: str, state: dict, run: int | None) -> None:
        completed = state.setdefault("completed_runs", [])
        expected = state.get("runs", {}).get(str(run)) if run is not None else None
        run_done = state.get("done", {}).get(str(run), {})
        if expected is not None and "total" in state and len(run_done) >= expected and run not in completed:
            succeeded = sum(v[0] for v in run_done.values())
            failed = sum(v[1] for v in run_done.values())
            await self.ctx.publisher.send_and_wait(JobCompleted(
                job_id=job_id, run=run, total=succeeded + failed, succeeded=succeeded, failed=failed,
                cancelled=bool(state.get("cancelled")),
            ))
            completed.append(run)
            log.info("job %s run %d completed: %d succeeded, %d failed", job_id, run, succeeded, failed)
        if state.get("retry_pending") is not None and all_runs_completed(state):
            await self._start_retry(job_id, state, only_retryable=state["retry_pending"])
            state["retry_pending"] = None
        self._save(job_id, state)

    async def _start_retry(self, job_id: str, state: dict, *, only_retryable: bool) -> None:
        def failures_of(run: int, batch: int) -> list:
            return (self.ctx.job_failures.get(f"{job_id}:{run}:{batch}") or {}).get("f", [])

        chosen = choose(current_failures(state, failures_of), only_retryable=only_retryable)
        if not chosen:
            log.info("retry of job %s: nobody to serve again", job_id)
            return
        wanted: dict[tuple[int, int], set[int]] = defaultdict(set)
        for userid, failure in chosen.items():
            wanted[(failure.run, failure.batch_no)].add(userid)
        recipients: list[Recipient] = []
        source: BatchDispatched | None = None
        for (run, batch_no), userids in sorted(wanted.items()):
            where = self.ctx.job_failures.get(f"{job_id}:{run}:{batch_no}") or {}
            if where.get("p") is None:
                log.warning("retry of job %s: batch %d of run %d has no source record", job_id, batch_no, run)
                continue
            dispatched = await self.ctx.ledger.fetch("batches", where["p"], where["o"])
            if not isinstance(dispatched, BatchDispatched):
                continue
            source = source or dispatched
            recipients.extend(r for r in dispatched.recipients if r.userid in userids)
        if source is None or not recipients:
            return
        if state.pop("cancelled", False):  # before dispatching: serving them again is the opposite of cancelling
            self.ctx.cancelled_jobs.pop(job_id, None)
        new_run = max(int(r) for r in state["runs"]) + 1
        chunks = list(batches(sorted(recipients, key=lambda r: r.userid), self.ctx.settings.job_batch_size))
        locations = await self.ctx.publisher.send_all(
            BatchDispatched(
                job_id=job_id, run=new_run, batch_no=number, batch_count=len(chunks), type=source.type,
                company_id=source.company_id, route=source.route, provider=source.provider,
                template_id=source.template_id, template_data=source.template_data,
                template_data_at=source.template_data_at, recipients=chunk,
                notify_template_id=source.notify_template_id,
            )
            for number, chunk in enumerate(chunks)
        )
        state["runs"][str(new_run)] = len(chunks)
        state.setdefault("locations", {})[str(new_run)] = [list(where) for where in locations]
        state.setdefault("included", {})[str(new_run)] = [r.userid for r in recipients]
        log.info("job %s retry run %d: %d learners in %d batches", job_id, new_run, len(recipients), len(chunks))


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
        for job_id, state in list(self.ctx.job_progress.items()):
            if not state or state.get("cancelled") or now - state.get("touched", now) < after:
                continue
            completed = set(state.get("completed_runs", []))
            for run, count in state.get("runs", {}).items():
                if int(run) in completed or now - self._last.get((job_id, int(run)), 0) < after:
                    continue
                done = state.get("done", {}).get(run, {})
                where = state.get("locations", {}).get(run, [])
                missing = [b for b in range(count) if str(b) not in done and b < len(where)]
                if not missing:
                    continue
                self._last[(job_id, int(run))] = now
                log.warning("job %s run %s made no progress for %.0f s: sending %d unfinished batches again",
                            job_id, run, now - state["touched"], len(missing))
                for batch_no in missing:
                    partition, offset = where[batch_no]
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
