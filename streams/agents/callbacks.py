"""send-callbacks: tell Moodle, signed, when a job starts, passes progress milestones, pauses on its bounce or
complaint rate, is resumed, and completes.

The agent on the jobs topic only *queues* a callback, in the ``callbacks`` table (one entry per job, its
changelog makes it survive a crash or a move to another worker); it never waits for Moodle, so a Moodle that is
down cannot hold up the jobs partition. A timer on every worker sends the due callbacks of the jobs whose table
partition it owns, each attempt in its own task: delivered -> CallbackDelivered and the next callback of the
job; failed -> CallbackFailed with the next attempt's time, exponential backoff with jitter, until
``callback_max_age`` (24 h by default) has passed. A job's callbacks go out in order (started, milestones,
paused/resumed, completed): Moodle never hears "completed" before "started". A pause and a resume are named by
their event's time (``paused-<ms>``), so a job paused twice gets two callbacks and an event read again none.

At-least-once: a worker that dies after Moodle answered but before the table was updated sends that callback
again; Moodle recognises it by ``callback_id`` (also in the ``X-Offload-Callback-Id`` header).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import TP

from adapters.callbacks import Attempt, CallbackSender, callback_body, moodle_dependency, unsubscribe_body
from eventlog.publisher import partition_for
from resilience.backoff import backoff
from resilience.dependencies import DEPENDENCIES, Dependencies
from schemas.envelope import UndecodableRecord, decode
from schemas.events import (
    BatchCompleted,
    CallbackDelivered,
    CallbackFailed,
    JobAccepted,
    JobCompleted,
    JobPaused,
    JobRejected,
    JobResumed,
    client_job_id,
)
from schemas.events.suppression import RecipientUnsubscribed
from security.callback_urls import SealedQueryError, open_query, scrub, seal_query
from streams.context import BatchProgressTable, StreamContext
from streams.state import CallbackQueue, PendingCallback

log = logging.getLogger(__name__)

TABLE = "callbacks"  # changelog: {app_id}-callbacks-changelog, job_partitions partitions, compacted


class CallbacksTable(BatchProgressTable):
    """Keyed by job id and written to the partition Kafka gives the job id, i.e. the job's partition of the jobs
    topic: the timer, which runs outside any event, can write it, and the worker owning a job's events owns it."""


def _iso(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


class CallbackScheduler:
    """Queues callbacks from job events and delivers them when due; a job's table entry is a CallbackQueue."""

    def __init__(self, ctx: StreamContext, table: Any, sender: CallbackSender,
                 dependencies: Dependencies | None = None) -> None:
        self.ctx = ctx
        # Each Moodle host in the worker's health (when given): lost while its callbacks fail for a reason
        # worth retrying, back at the first one it takes.
        self.dependencies = dependencies
        self.settings = ctx.settings
        self.table = table
        self.sender = sender
        self._in_flight: dict[str, asyncio.Task] = {}
        self._with_pending: set[str] = set()
        self._actives: frozenset[TP] | None = None
        self.partitions = self.settings.job_partitions
        self._limit = asyncio.Semaphore(self.settings.callback_concurrency)

    # --- queueing, in the agent ---------------------------------------------------------------------------

    async def handle(self, message: faust.types.Message) -> None:
        try:
            event = decode(message.value, message.headers)
        except UndecodableRecord as exc:
            await self.ctx.dead_letter(message, str(exc), "send-callbacks")
            return
        state: CallbackQueue | None
        if isinstance(event, JobAccepted):
            if not event.callback_url or self.table.get(event.job_id) is not None:
                return
            state = self._new_queue(event, event.company_id, event.total_recipients)
            self._queue(state, event.job_id, "started", "accepted", run=0, succeeded=0, failed=0,
                        at=event.accepted_at)
            self._save(event.job_id, state)
        elif isinstance(event, JobRejected):
            self._queue_rejected(event)
        elif isinstance(event, BatchCompleted):
            state = self._state(event.job_id)
            if state is None or event.run != 0 or state.done is None:
                return  # no callback URL, or a retry run (its milestones are not meaningful), or finished
            state.done.add(event.batch_no, event.succeeded, event.failed, event.suppressed)  # once per batch
            succeeded, failed, suppressed = state.progress()
            percent = (succeeded + failed + suppressed) * 100 // state.total if state.total else 100
            crossed = [m for m in sorted(self.settings.callback_milestones)
                       if m <= percent and f"progress-{m}" not in state.queued]
            if crossed:
                state.queued.extend(f"progress-{m}" for m in crossed[:-1])
                if percent < 100:  # at 100 % the completed callback says it all
                    self._queue(state, event.job_id, f"progress-{crossed[-1]}", "running", run=0,
                                succeeded=succeeded, failed=failed, suppressed=suppressed, milestone=crossed[-1],
                                at=event.completed_at)
                else:
                    state.queued.append(f"progress-{crossed[-1]}")
            self._save(event.job_id, state)
        elif isinstance(event, JobCompleted):
            self._queue_completed(event)
        elif isinstance(event, JobPaused | JobResumed):
            self._queue_pause(event)

    def _new_queue(self, event: JobAccepted | JobRejected, company_id: int, total: int) -> CallbackQueue:
        assert event.callback_url is not None
        url, sealed = event.callback_url, event.callback_query_sealed
        if sealed is None:  # written before the API sealed queries: keep the query out of the changelog too
            url, sealed = seal_query(url, event.job_id, self.settings.callback_url_secret.get_secret_value().encode())
        # key_id None when the job named no key: the company's current key signs (Settings.callback_key_for).
        return CallbackQueue(company_id=company_id, url=url, sealed=sealed, key_id=event.callback_key_id, total=total)

    def _queue_rejected(self, event: JobRejected) -> None:
        """A rejection carries a callback URL only when nobody waits for the answer: a chunked job closed for
        staying open without a commit (streams.chunked_jobs). Moodle hears why, as the API would answer."""
        if not event.callback_url or event.company_id is None or self.table.get(event.job_id) is not None:
            return
        state = self._new_queue(event, event.company_id, 0)
        state.done = None  # no milestones
        self._queue(state, event.job_id, "rejected", "rejected", run=0, succeeded=0, failed=0, at=event.rejected_at,
                    problems=[p.model_dump(mode="json") for p in event.problems])
        self._save(event.job_id, state)

    def _queue_completed(self, event: JobCompleted) -> None:
        state = self._state(event.job_id)
        if state is None:
            return
        name = "completed" if event.run == 0 else f"completed-run{event.run}"
        status = "cancelled" if event.cancelled else "completed"
        self._queue(state, event.job_id, name, status, run=event.run, succeeded=event.succeeded,
                    failed=event.failed, suppressed=event.suppressed, total=event.total, at=event.completed_at)
        if event.run == 0:
            state.done = None  # no more milestones: keep the entry small
        self._save(event.job_id, state)

    def _queue_pause(self, event: JobPaused | JobResumed) -> None:
        """Queue the callback that tells Moodle its job paused on its bounce/complaint rate (with the figures the
        worker decided on), or was resumed. The totals are the first run's so far, as the milestones count them."""
        state = self._state(event.job_id)
        if state is None:
            return  # no callback URL
        succeeded, failed, suppressed = state.progress()
        if isinstance(event, JobPaused):
            pause = {"reason": event.reason, "sent": event.sent, "bounced": event.bounced,
                     "complained": event.complained, "bounce_rate": event.bounce_rate,
                     "complaint_rate": event.complaint_rate, "bounce_threshold": event.bounce_threshold,
                     "complaint_threshold": event.complaint_threshold, "min_sample": event.min_sample}
            self._queue(state, event.job_id, f"paused-{_ms(event.paused_at)}", "paused", run=0,
                        succeeded=succeeded, failed=failed, suppressed=suppressed, at=event.paused_at, pause=pause)
        else:
            resume = {"requested_by": event.requested_by, "reason": event.reason}
            self._queue(state, event.job_id, f"resumed-{_ms(event.resumed_at)}", "running", run=0,
                        succeeded=succeeded, failed=failed, suppressed=suppressed, at=event.resumed_at,
                        resume=resume)
        self._save(event.job_id, state)

    def queue_unsubscribe(self, event: RecipientUnsubscribed, url: str) -> None:
        """Queue the callback that tells Moodle a learner unsubscribed. It is delivered, retried and recorded like a
        job's callbacks, under its own key (``unsubscribe:company:userid:list:time``) in place of a job id."""
        key = f"unsubscribe:{event.subject()}:{int(event.unsubscribed_at.timestamp() * 1000)}"
        if self.table.get(key) is not None:
            return  # the event read again after a crash: queued already
        now = time.time()
        body = unsubscribe_body(callback_id=key, company_id=event.company_id, userid=event.userid,
                                list_id=event.list_id, method=event.method, at=event.unsubscribed_at)
        state = CallbackQueue(company_id=event.company_id, url=url, key_id=None, total=0, done=None,
                              queued=["unsubscribed"],
                              pending=[PendingCallback(callback_id=key, event="unsubscribed", run=0, milestone=None,
                                                       body=body.decode(), attempt=0, first_at=now, next_at=now)])
        self._save(key, state)

    def _queue(self, state: CallbackQueue, job_id: str, name: str, status: str, *, run: int, succeeded: int,
               failed: int, at: datetime, milestone: int | None = None, total: int | None = None,
               suppressed: int = 0, pause: dict[str, Any] | None = None,
               resume: dict[str, Any] | None = None, problems: list[dict[str, Any]] | None = None) -> None:
        if name in state.queued:
            return
        event = name.split("-")[0]
        callback_id = f"{job_id}:{run}:{name}"
        # Moodle hears the job id it chose, also for a job the API stored scoped (schemas.events.client_job_id).
        body = callback_body(callback_id=callback_id, job_id=client_job_id(job_id, state.company_id),
                             company_id=state.company_id, event=event,
                             status=status, run=run, total=state.total if total is None else total,
                             succeeded=succeeded, failed=failed, suppressed=suppressed, milestone=milestone, at=at,
                             pause=pause, resume=resume, problems=problems)
        now = time.time()
        state.queued.append(name)
        state.pending.append(PendingCallback(callback_id=callback_id, event=event, run=run, milestone=milestone,
                                             body=body.decode(), attempt=0, first_at=now, next_at=now))

    def _state(self, job_id: str) -> CallbackQueue | None:
        current = self.table.get(job_id)
        return CallbackQueue.from_dict(current) if current else None

    def _save(self, job_id: str, state: CallbackQueue) -> None:
        # Assign a new value: Faust writes the changelog on assignment, not on mutation.
        self.table[job_id] = state.to_dict()
        if state.pending:
            self._with_pending.add(job_id)
        else:
            self._with_pending.discard(job_id)

    # --- delivery, in the timer -----------------------------------------------------------------------------

    def tick(self) -> None:
        """Start an attempt for every owned job whose next callback is due and not already in flight."""
        actives = frozenset(self.ctx.app.assignor.assigned_actives())
        if actives != self._actives:  # started or rebalanced: entries may have arrived through recovery
            self._actives = actives
            self._with_pending = {job_id for job_id, stored in self.table.items()
                                  if stored and CallbackQueue.from_dict(stored).pending}
        changelog = self.table.changelog_topic.get_topic_name()
        now = time.time()
        for job_id in list(self._with_pending):
            if job_id in self._in_flight:
                continue
            if TP(changelog, partition_for(job_id.encode(), self.partitions)) not in actives:
                continue  # another worker's job (we may hold a standby copy of it)
            state = self._state(job_id)
            if state is None or not state.pending:
                self._with_pending.discard(job_id)
                continue
            if state.pending[0].next_at <= now:
                task = asyncio.ensure_future(self._attempt(job_id, state.pending[0], state))
                self._in_flight[job_id] = task
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        for job_id, running in list(self._in_flight.items()):
            if running is task:
                del self._in_flight[job_id]

    async def _attempt(self, job_id: str, callback: PendingCallback, state: CallbackQueue) -> None:
        try:
            async with self._limit:
                await self.ctx.ensure_started()
                attempt_no = callback.attempt + 1
                key = self.settings.callback_key_for(state.company_id, state.key_id)
                if key is None:
                    result = Attempt(False, None, f"no callback key configured for company {state.company_id}",
                                     0, permanent=True)
                else:
                    key_id, api_key = key
                    try:
                        # Sealed by the API under the id the company chose, before a scoped id (finding 12).
                        url = open_query(state.url, state.sealed, client_job_id(job_id, state.company_id),
                                         self.settings.callback_url_secret.get_secret_value().encode())
                    except SealedQueryError as exc:
                        result = Attempt(False, None, str(exc), 0, permanent=True)
                        await self._record(job_id, callback, attempt_no, result)
                        return
                    result = await self.sender.send(url, callback.body.encode(), key_id=key_id,
                                                    secret=api_key.secret.get_secret_value(),
                                                    callback_id=callback.callback_id)
                    if result.error:  # an error that quotes the URL, or a part of it, keeps no token
                        result = replace(result, error=scrub(result.error, url[len(state.url) + 1:]))
                    self._report(url, result)
                await self._record(job_id, callback, attempt_no, result)
        except asyncio.CancelledError:
            raise
        except Exception:  # a broker hiccup while recording: the entry is unchanged, the next tick tries again
            log.exception("callback %s: attempt could not be recorded", callback.callback_id)

    def _report(self, url: str, result: Attempt) -> None:
        if self.dependencies is None or result.permanent:  # a forbidden URL says nothing of Moodle
            return
        if result.delivered:
            self.dependencies.restored(moodle_dependency(url))
        else:
            self.dependencies.lost(moodle_dependency(url), result.error or "not delivered")

    async def _record(self, job_id: str, callback: PendingCallback, attempt_no: int, result: Attempt) -> None:
        common: dict[str, Any] = {"job_id": job_id, "callback_id": callback.callback_id,
                                  "event": callback.event, "run": callback.run,
                                  "milestone": callback.milestone, "attempt": attempt_no}
        next_at: float | None = None
        if result.delivered:
            await self.ctx.publisher.send_and_wait(
                CallbackDelivered(**common, status=result.status or 0, duration_ms=result.duration_ms))
            log.info("callback %s delivered (attempt %d, HTTP %s)", callback.callback_id, attempt_no,
                     result.status)
        else:
            # Equal jitter: never sooner than half the ceiling, so a Moodle coming back is not hit at once.
            delay = backoff(attempt_no, base=self.settings.callback_retry_base,
                            cap=self.settings.callback_retry_max, jitter="equal")
            if not result.permanent and time.time() + delay - callback.first_at <= self.settings.callback_max_age:
                next_at = time.time() + delay
            await self.ctx.publisher.send_and_wait(CallbackFailed(
                **common, status=result.status, error=(result.error or "failed")[:2000],
                next_attempt_at=_iso(next_at) if next_at else None, duration_ms=result.duration_ms))
            log.warning("callback %s attempt %d failed: %s; %s", callback.callback_id, attempt_no, result.error,
                        f"next in {delay:.0f} s" if next_at else "given up")
        # Published first, then the table: a crash in between repeats the attempt, it never loses it.
        state = self._state(job_id)
        if state is None or not state.pending or state.pending[0].callback_id != callback.callback_id:
            return
        if next_at is None:
            state.pending.pop(0)
        else:
            state.pending[0] = replace(state.pending[0], attempt=attempt_no, next_at=next_at)
        if not state.pending and job_id.startswith("unsubscribe:"):  # one callback each: forget it once done
            del self.table[job_id]
            self._with_pending.discard(job_id)
            return
        self._save(job_id, state)

    async def stop(self) -> None:
        for task in list(self._in_flight.values()):
            task.cancel()
        await asyncio.gather(*self._in_flight.values(), return_exceptions=True)


def register(app: faust.App, ctx: StreamContext) -> CallbackScheduler:
    table = app.tables.add(CallbacksTable(
        app, name=TABLE, beacon=app.tables.beacon, partitions=ctx.settings.job_partitions, default=None))
    sender = CallbackSender(ctx.settings)
    scheduler = CallbackScheduler(ctx, table, sender, DEPENDENCIES)

    class _Lifecycle:  # the scheduler's tasks stop before the HTTP session closes (services stop in reverse)
        async def start(self) -> None:
            await sender.start()

        async def stop(self) -> None:
            await scheduler.stop()
            await sender.stop()

    ctx.add_service(_Lifecycle())

    # concurrency=1: with more, faust-streaming can commit past an in-flight message (#606).
    @app.agent(ctx.jobs, name="send-callbacks", concurrency=1)
    async def send_callbacks(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await ctx.guarded(event.message, "send-callbacks", scheduler.handle)

    @app.timer(interval=ctx.settings.callback_check_interval, name="deliver-callbacks")
    async def deliver_callbacks() -> None:
        if app.rebalancing or app.in_recovery:
            return  # the table may be half-recovered; the next tick will do
        scheduler.tick()

    return scheduler
