"""track-progress: count finished batches per job and emit JobCompleted once every batch is done.

Batches report once each (BatchCompleted); a batch reported twice (processed again after a crash) is
counted once, because the table remembers which batch numbers are done.
"""

from __future__ import annotations

import logging

import faust

from schemas.envelope import UndecodableRecord, decode
from schemas.events import BatchCompleted, JobAccepted, JobCompleted
from streams.context import StreamContext

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
        if isinstance(event, JobAccepted):
            state = self._state(event.job_id)
            state.setdefault("total", event.total_recipients)
            state.setdefault("batch_count", event.batch_count)
            await self._save_and_maybe_complete(event.job_id, state)
        elif isinstance(event, BatchCompleted):
            state = self._state(event.job_id)
            state.setdefault("batch_count", event.batch_count)
            done = state.setdefault("done", {})
            run_done = done.setdefault(str(event.run), {})
            run_done.setdefault(str(event.batch_no), [event.succeeded, event.failed])
            await self._save_and_maybe_complete(event.job_id, state, run=event.run)

    def _state(self, job_id: str) -> dict:
        current = self.ctx.job_progress.get(job_id)
        return dict(current) if current else {}

    async def _save_and_maybe_complete(self, job_id: str, state: dict, run: int = 0) -> None:
        run_done = state.get("done", {}).get(str(run), {})
        completed = state.setdefault("completed_runs", [])
        finished = (
            "total" in state
            and len(run_done) >= state["batch_count"]
            and run not in completed
        )
        if finished:
            succeeded = sum(v[0] for v in run_done.values())
            failed = sum(v[1] for v in run_done.values())
            await self.ctx.publisher.send_and_wait(
                JobCompleted(job_id=job_id, run=run, total=succeeded + failed, succeeded=succeeded, failed=failed)
            )
            completed.append(run)
            log.info("job %s run %d completed: %d succeeded, %d failed", job_id, run, succeeded, failed)
        # Assign a new value: Faust writes the changelog on assignment, not on mutation.
        self.ctx.job_progress[job_id] = state


def register(app: faust.App, ctx: StreamContext) -> None:
    tracker = ProgressTracker(ctx)

    @app.agent(ctx.jobs, name="track-progress", concurrency=1)
    async def track_progress(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await ctx.guarded(event.message, "track-progress", tracker.handle)
