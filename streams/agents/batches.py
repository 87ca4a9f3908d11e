"""process-batches: do the work of one batch, record one outcome per recipient, then report the batch done.

Crash safety, in order: (1) note where this batch's outcomes will start in the log and make that note durable,
(2) do the work, producing each recipient's outcome as soon as it is final, (3) wait until the broker has
every outcome, (4) emit BatchCompleted and mark the batch done. A batch that comes back after a crash
reads its already recorded outcomes from the log (streams.ledger) and serves only the others; a batch that
comes back after step 4 only repeats its BatchCompleted, which progress counts once.

Pipelined: a batch's sends may still be out when the next batch starts. ``BatchRunner.serve`` does step 1 and
starts step 2 (every message composed and handed to the SMTP/provider sessions) and returns the rest as a
``Finish``: the end of the sends, then steps 3-4. The next batch is taken, noted and composed meanwhile, and its
chunks queue behind this batch's last ones for the sessions (a certificate batch's, behind its last ones for the
render processes), so no session idles across the boundary (nor through BatchCompleted, the table mark, the ack
and the next record's intake). The guarantees:
- Commits never pass an unfinished batch. The agent takes its records without Faust's automatic ack and acks
  each one itself, only once its batch has finished step 4 and the record before it was acked, so in record
  order; the consumer commits an offset only once every record before it was acked. Step 3 of each batch runs
  once the batch before it has every outcome in the log, so batches become durable in record order too; step 4
  (BatchCompleted, the table mark) does not wait for the one before.
- At most two batches send at once: batch k+1 is taken, noted and composed while k-1 and k still send, but
  its first message goes out only once batch k-1 has every outcome in the log (step 3; its step 4 may still
  run), and record k+2 is taken only after that. So the sends without a durable outcome (the only ones a
  killed worker can repeat) belong to at most two consecutive batches, k and k+1: anything of k-1 or before
  is in the log, and k+2 sends nothing yet. (Batches that send nothing, paused or dead-lettered, do not
  count: the gate is the batch two before among those that have a Finish.) A killed worker
  re-sends at most two batches' unrecorded sends (never anyone whose outcome is recorded: the batch served
  again reads its outcomes back from the ledger first); the crash and fault tests hold it to that bound.
- A batch delivered again while the batch before it (maybe its own first delivery) still sends reads its
  recorded outcomes only once that batch's outcomes are all in the log (``Finish.durable``).
- Sends that fail (a bug, an outcome that could not be produced) are stopped, what was recorded is flushed,
  and the batch is served again from the ledger (``ctx.guarded`` retries, then dead-letters), as before.
- An outcome the broker refuses is produced again (``OutcomeRecorder.flush``; the publisher has a new producer by
  then); one it keeps refusing fails the batch the same way. A batch is never reported done while an outcome it
  counts is not in the log.
- A rebalance or a stop waits until every record a stream has taken is acked (Faust's ``wait_empty``, with no
  deadline). A batch whose sends wait for the account's 24-hour quota, or for an unreachable relay (waited out for
  up to OFFLOAD_RELAY_OUTAGE_MAX_SECONDS), may not end for hours (a slowly paced one for many minutes), so while
  the consumer waits, a batch whose sends all wait is given up (``BatchRunner.give_up_stalled``): its sends are
  stopped (nothing of it is in flight: they wait), what it recorded is flushed, and its record is left unacked and
  let go of, to be served again, from the ledger, by whichever worker gets its partition. Records after it are
  not acked either (acks stay in record order); a batch among them that completed only repeats its BatchCompleted
  when served again.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import cast

import faust

from resilience.dependencies import DEPENDENCIES
from schemas.envelope import UndecodableRecord, decode
from schemas.events import (
    BatchCompleted,
    BatchDispatched,
    FailedRecipient,
    Recipient,
    RecipientFailed,
    RecipientOutcome,
)
from streams.batchwork import BatchHandler, OutcomeRecorder
from streams.context import StreamContext
from streams.held_events import HeldEvents
from streams.job_data import JobData
from streams.state import BatchProgress
from streams.suppressions import SuppressionList
from streams.transport import held_events

log = logging.getLogger(__name__)


class Finish:
    """The rest of a batch once its work is handed out: the end of its sends, then steps 3-4. ``durable`` is set
    once its outcomes are all in the log; ``failed`` once its sends failed (the batch must be served again);
    ``given_up`` says why a rebalance or stop gave the batch up (it is served again, after them)."""

    def __init__(self, key: str, sends: asyncio.Future[bool] | None, recorder: OutcomeRecorder,
                 complete: Callable[[bool], Awaitable[None]]) -> None:
        self.key = key
        self._sends = sends
        self._recorder = recorder
        self._complete = complete
        self.durable = asyncio.Event()
        self.failed = False
        self.given_up: str | None = None

    def stalled(self) -> str | None:
        """Why the batch's sends all wait, with nothing in flight, while they do (the account's 24-hour quota, an
        unreachable relay, a rate limit)."""
        if self._sends is None or self._sends.done() or self._recorder.stalled_by is None:
            return None
        return self._recorder.stalled_by()

    def give_up(self, why: str) -> None:
        """Stop the sends, which wait (``stalled``); the batch ends unfinished, to be served again."""
        self.given_up = why
        self.abandon()

    async def __call__(self) -> bool:
        """Steps 3-4 once the sends have ended; False, with what was recorded flushed, once the batch was given up
        (it is not done: it is served again)."""
        fell_back = False
        if self._sends is not None:
            try:
                fell_back = await self._sends
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if self.given_up is None or (current is not None and current.cancelling()):
                    raise
                await self._recorder.flush()  # what was recorded stays recorded: the batch served again reads it back
                return False
            except Exception:
                self.failed = True
                await self._recorder.flush()  # what was recorded stays recorded: the batch served again reads it back
                raise
        try:
            await self._recorder.flush()
        except Exception:
            # Outcomes the broker kept refusing: the batch is served again from what the log holds, never
            # reported done without them (learners whose outcome is missing are sent again).
            self.failed = True
            raise
        self.durable.set()
        await self._complete(fell_back)
        return True

    def abandon(self) -> None:
        """Stop the sends still out (the worker stops serving this partition or exits)."""
        if self._sends is not None:
            self._sends.cancel()


class BatchRunner:
    def __init__(self, ctx: StreamContext, handlers: dict[str, BatchHandler]) -> None:
        self.ctx = ctx
        self.handlers = handlers
        self.job_data = JobData(ctx.ledger)
        self.suppressions = SuppressionList(ctx.suppressions)
        self._recent: list[Finish] = []  # the last two batches served that have a Finish, oldest first
        self._out: weakref.WeakSet[Finish] = weakref.WeakSet()  # batches whose sends may still be out

    async def serve(self, message: faust.types.Message) -> Finish | None:
        """Step 1 and the start of step 2 of one batch; returns the rest, to run before the record is acked and
        only once the batch served before it has its outcomes in the log (its ``durable``).

        The batch is taken, noted and composed at once, but its first send waits until the batch served two
        before it has every outcome in the log (``gate``): only this batch and the one before it can then have
        sends without a durable outcome."""
        previous = self._recent[-1] if self._recent else None
        gate = self._recent[-2].durable if len(self._recent) == 2 else None
        finish = await self._serve(message, previous, gate)
        if finish is not None:
            self._recent = [*self._recent[-1:], finish]
        return finish

    async def serve_again(self, message: faust.types.Message) -> Finish | None:
        """The same batch once more after its sends failed, from its recorded outcomes; every batch before it
        has its outcomes in the log by then (its Finish runs after they do), and the batch after it waits for
        this one."""
        return await self._serve(message, None, None)

    def give_up_stalled(self) -> None:
        """Give up each batch whose sends all wait (the module docstring's last point)."""
        for finish in list(self._out):
            why = finish.stalled()
            if why is not None and finish.given_up is None:
                log.warning("batch %s given up for now, unacked, as the worker stops or rebalances while its sends "
                            "wait (%s): whichever worker gets its partition serves it again", finish.key, why)
                finish.give_up(why)

    async def _accept(self, message: faust.types.Message) -> tuple[BatchDispatched, BatchHandler] | None:
        """The batch and its job type's handler; None once a record that is neither was dead-lettered."""
        try:
            batch = decode(message.value, message.headers)
        except UndecodableRecord as exc:
            await self.ctx.dead_letter(message, str(exc), "process-batches")
            return None
        if not isinstance(batch, BatchDispatched):
            await self.ctx.dead_letter(message, f"unexpected {type(batch).__name__}", "process-batches")
            return None
        handler = self.handlers.get(batch.type)
        if handler is None:
            await self.ctx.dead_letter(message, f"no handler for {batch.type} batches", "process-batches")
            return None
        return batch, handler

    async def _serve(self, message: faust.types.Message, previous: Finish | None,
                     gate: asyncio.Event | None) -> Finish | None:
        accepted = await self._accept(message)
        if accepted is None:
            return None
        batch, handler = accepted
        if batch.template_data_at is not None:
            data, content = await self.job_data.parts(batch)
            batch = batch.model_copy(update={"template_data": data, "content": content or batch.content})
        key = batch.kafka_key()
        table = self.ctx.batch_progress
        stored = table.get(key)
        state = BatchProgress.from_dict(stored) if stored else None
        source = (message.partition, message.offset)
        recorder = OutcomeRecorder(self.ctx)
        if state is not None and state.stage == "done":
            failures = [FailedRecipient(userid=u, retryable=r) for u, r in state.failures]
            recorder.sent_by, recorder.pacing = dict(state.sent_by), state.pacing
            recorder.suppressed = state.suppressed

            async def repeat_completed(_fell_back: bool) -> None:
                await self._complete(batch, recorder, failures, state.fell_back, source, succeeded=state.succeeded)
            return Finish(key, None, recorder, repeat_completed)
        if self.ctx.paused_jobs.get(batch.job_id) and not self.ctx.cancelled_jobs.get(batch.job_id):
            # Neither sent nor failed: JobResumed (or a cancel) sends this batch again (track-progress).
            log.info("batch %s waits: job %s is paused", key, batch.job_id)
            return None
        recorded = await self._begin(batch, state, recorder, previous)
        remaining = [r for r in batch.recipients if r.userid not in recorded]
        sends = await self._work(batch, handler, remaining, recorder, gate) if remaining else None

        async def mark_and_complete(fell_back: bool) -> None:
            if recorder.paced_by is not None:
                recorder.pacing = recorder.paced_by()
            table[key] = BatchProgress.done(recorder.succeeded, fell_back,
                                            [(f.userid, f.retryable) for f in recorder.failures],
                                            recorder.sent_by, recorder.pacing, recorder.suppressed).to_dict()
            await self._complete(batch, recorder, recorder.failures, fell_back, source,
                                 succeeded=recorder.succeeded)
        finish = Finish(key, sends, recorder, mark_and_complete)
        if sends is not None:
            self._out.add(finish)
        return finish

    async def _work(self, batch: BatchDispatched, handler: BatchHandler, remaining: list[Recipient],
                    recorder: OutcomeRecorder, gate: asyncio.Event | None) -> asyncio.Future[bool] | None:
        """Step 2 handed out: the sends of those not yet served (None when none are sent), none before ``gate``."""
        if self.ctx.cancelled_jobs.get(batch.job_id):
            for recipient in remaining:  # a retry may serve them later
                await recorder.record(RecipientFailed(
                    job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no, userid=recipient.userid,
                    email=recipient.email, error="job cancelled before this batch ran", attempts=0, retryable=True,
                ))
            return None
        # Learners on the company's suppression list get their outcome here and are not sent.
        remaining = await self.suppressions.hold_back(batch, remaining, recorder)
        if not remaining:
            return None
        return await handler.start(batch, remaining, recorder, gate)

    async def _begin(self, batch: BatchDispatched, state: BatchProgress | None, recorder: OutcomeRecorder,
                     previous: Finish | None) -> dict[int, RecipientOutcome]:
        """The outcomes this batch recorded before a crash (counted into ``recorder``); on a first run none,
        once it is durably noted where the batch's outcomes will start in the log."""
        key = batch.kafka_key()
        if state is not None and state.stage == "started":
            assert state.partition is not None and state.offset is not None
            # The batch may be this worker's previous one delivered again (maybe still sending): read its
            # outcomes once all are in.
            if previous is not None:
                await previous.durable.wait()
            recorded = await self.ctx.ledger.recorded(
                job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no,
                partition=state.partition, from_offset=state.offset,
            )
            log.warning("batch %s served again (after a crash, a stop or a rebalance): %d of %d already recorded", key,
                        len(recorded), len(batch.recipients))
            for outcome in recorded.values():
                recorder.count(outcome)
            return recorded
        partition = self.ctx.publisher.partition_of("outcomes", batch.job_id.encode())
        offset = await self.ctx.ledger.end_offset(partition)
        # The note must be durable before anyone is served.
        await self.ctx.batch_progress.set_durably(key, BatchProgress.started(partition, offset).to_dict())
        return {}

    async def _complete(self, batch: BatchDispatched, recorder: OutcomeRecorder, failures: list[FailedRecipient],
                        fell_back: bool, source: tuple[int, int], *, succeeded: int) -> None:
        await self.ctx.publisher.send_and_wait(
            BatchCompleted(job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no,
                           batch_count=batch.batch_count, succeeded=succeeded, failed=len(failures),
                           fell_back=fell_back, failures=failures, source_partition=source[0],
                           source_offset=source[1], sent_by=recorder.sent_by, pacing=recorder.pacing,
                           suppressed=recorder.suppressed)
        )


def share_of_batches(app: faust.App, ctx: StreamContext) -> Callable[[], float]:
    """The fraction of the batch partitions this worker owns, now: its share of every account's rate.

    Asked before every provider call; counted again once per consumer generation (each rebalance makes a new
    one), not from the whole assignment (~100 partitions) every call."""
    counted: list[tuple[int, float]] = []  # (consumer generation, share) as last counted

    def share() -> float:
        generation = app.consumer_generation_id
        if counted and counted[0][0] == generation:
            return counted[0][1]
        topic = ctx.batches.get_topic_name()
        owned = sum(1 for tp in app.assignor.assigned_actives() if tp.topic == topic)
        fraction = max(1, min(owned, ctx.settings.batch_partitions)) / ctx.settings.batch_partitions
        counted[:] = [(generation, fraction)]
        return fraction
    return share


def register(app: faust.App, ctx: StreamContext) -> None:
    from content.email import EmailRenderer, TemplateStore
    from streams.handlers.certificate_batches import CertificateBatchHandler
    from streams.handlers.email_batches import CertificateMailer, EmailBatchHandler
    from streams.handlers.email_providers import EmailProviders

    # One SMTP pool per worker, shared by email and certificate mail.
    providers = EmailProviders(ctx.settings, share=share_of_batches(app, ctx), dependencies=DEPENDENCIES)
    ctx.add_service(providers)
    mailer = CertificateMailer(ctx.settings, EmailRenderer(TemplateStore(ctx.settings.template_dir)), providers.smtp,
                               providers.dkim)
    handlers: dict[str, BatchHandler] = {"email": EmailBatchHandler.build(ctx, providers),
                                         "certificate": CertificateBatchHandler.build(ctx, mailer, DEPENDENCIES)}
    runner = BatchRunner(ctx, handlers)

    # concurrency=1 (faust-streaming #606), and records taken one at a time through stream.events(): with
    # take_events() a killed worker was seen to have committed offsets past batches it never started (they were
    # then never served). Acks are ours (noack): a record is acked only once its batch has finished, and the next
    # batch's work overlaps with that finish (see the module docstring). Parallelism comes from the batch's own
    # concurrent sends, from this overlap, from partitions and from more workers.
    @app.agent(ctx.batches, name="process-batches", concurrency=1)
    async def process_batches(stream: faust.StreamT) -> None:
        await run_pipelined(ctx, runner, stream)


async def run_pipelined(ctx: StreamContext, runner: BatchRunner, stream: faust.StreamT) -> None:
    """Serve each batch record, its sends overlapping with those of the batch before (module docstring)."""
    manual = cast(faust.Stream, stream).noack()
    held = held_events(ctx.app)
    stop_asking = held.when_waited_on(runner.give_up_stalled)  # a rebalance or stop waits for the records held
    finishing: list[asyncio.Task[bool]] = []  # the batches not yet acked, in record order
    durable: asyncio.Event | None = None  # set once the last batch served with a Finish has its outcomes in the log
    try:
        async for event in manual.events():
            # Returns once the batch's messages are handed to the sessions, which waits for the outcomes of the
            # batch two before it to be in the log (BatchRunner.serve): the next record is taken only then.
            finish = await ctx.guarded(event.message, "process-batches", runner.serve)
            finishing = [task for task in finishing if not task.done()]
            finishing.append(asyncio.create_task(
                _finish_and_ack(ctx, runner, manual, held, event, finish,
                                after=finishing[-1] if finishing else None, after_durable=durable)))
            if finish is not None:
                durable = finish.durable
        if finishing:
            await finishing[-1]
    finally:
        stop_asking()
        for task in finishing:
            if not task.done():
                task.cancel()  # not acked: the batch is served again, from the ledger


async def _finish_and_ack(ctx: StreamContext, runner: BatchRunner, stream: faust.StreamT, held: HeldEvents,
                          event: faust.EventT, finish: Finish | None, *, after: asyncio.Task[bool] | None,
                          after_durable: asyncio.Event | None) -> bool:
    """The end of one batch's sends and its steps 3-4, its step 3 after the batch before it has its outcomes in
    the log (``after_durable``: so batches become durable in record order, which the gate counts on); then, once
    the record before it was acked (``after``), the ack that lets it be committed. Its BatchCompleted need not
    wait for the one before: a batch's durability waited ~25 ms a batch for the previous BatchCompleted's
    acknowledgement, and the gate of the batch after next with it. Whether it acked: not once the batch was
    given up, nor after a record that was not acked (so none is committed past it); such a record is let go of,
    so no rebalance or stop waits for it, and is read again after them."""
    current = finish
    acked = False
    try:
        in_order = True
        if after_durable is not None:
            await after_durable.wait()  # set at the latest as that batch's task ends, whatever ended it
        done: bool | None = None
        if finish is not None:
            async def run(message: faust.types.Message) -> bool:
                nonlocal current
                if current is not None and current.failed:  # its sends failed: once more, from the ledger
                    current = await runner.serve_again(message)
                return await current() if current is not None else True
            done = await ctx.guarded(event.message, "process-batches", run)  # None: dead-lettered, so acked
        if after is not None:
            await asyncio.wait([after])
            in_order = _acked(after)
        if in_order and done is not False:
            await stream.ack(event)
            acked = True
    finally:
        for each in (finish, current):
            if each is not None:
                each.abandon()  # cancelled (or given up): no sends left running for a batch nobody finishes
                each.durable.set()  # done, given up (dead-lettered) or cancelled: a batch waiting may go on
        if not acked:
            held.let_go(event.message, stream)
    return acked


def _acked(task: asyncio.Task[bool]) -> bool:
    """Whether the finished task of the record before acked it."""
    if task.cancelled():
        return False
    error = task.exception()
    if error is not None:
        log.error("process-batches: finishing a batch failed; the records after it are not acked",
                  exc_info=error)
        return False
    return task.result()
