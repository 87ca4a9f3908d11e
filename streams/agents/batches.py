"""process-batches: do the work of one batch, record one outcome per recipient, then report the batch done.

Crash safety, in order: (1) note where this batch's outcomes will start in the log and make that note durable,
(2) do the work, producing each recipient's outcome as soon as it is final, (3) wait until the broker has
every outcome, (4) emit BatchCompleted and mark the batch done. A batch that comes back after a crash
reads its already recorded outcomes from the log (streams.ledger) and serves only the others; a batch that
comes back after step 4 only repeats its BatchCompleted, which progress counts once.
"""

from __future__ import annotations

import logging

import faust

from schemas.envelope import UndecodableRecord, decode
from schemas.events import BatchCompleted, BatchDispatched, FailedRecipient, RecipientFailed, RecipientOutcome
from streams.batchwork import BatchHandler, OutcomeRecorder
from streams.context import StreamContext
from streams.job_data import JobData
from streams.state import BatchProgress
from streams.suppressions import SuppressionList

log = logging.getLogger(__name__)


class BatchRunner:
    def __init__(self, ctx: StreamContext, handlers: dict[str, BatchHandler]) -> None:
        self.ctx = ctx
        self.handlers = handlers
        self.job_data = JobData(ctx.ledger)
        self.suppressions = SuppressionList(ctx.suppressions)

    async def handle(self, message: faust.types.Message) -> None:
        try:
            batch = decode(message.value, message.headers)
        except UndecodableRecord as exc:
            await self.ctx.dead_letter(message, str(exc), "process-batches")
            return
        if not isinstance(batch, BatchDispatched):
            await self.ctx.dead_letter(message, f"unexpected {type(batch).__name__}", "process-batches")
            return
        handler = self.handlers.get(batch.type)
        if handler is None:
            await self.ctx.dead_letter(message, f"no handler for {batch.type} batches", "process-batches")
            return
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
            await self._complete(batch, recorder, failures, state.fell_back, source, succeeded=state.succeeded)
            return
        if self.ctx.paused_jobs.get(batch.job_id) and not self.ctx.cancelled_jobs.get(batch.job_id):
            # Neither sent nor failed: JobResumed (or a cancel) sends this batch again (track-progress).
            log.info("batch %s waits: job %s is paused", key, batch.job_id)
            return
        recorded = await self._begin(batch, state, recorder)
        remaining = [r for r in batch.recipients if r.userid not in recorded]
        fell_back = False
        if remaining and self.ctx.cancelled_jobs.get(batch.job_id):
            for recipient in remaining:  # a retry may serve them later
                await recorder.record(RecipientFailed(
                    job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no, userid=recipient.userid,
                    email=recipient.email, error="job cancelled before this batch ran", attempts=0, retryable=True,
                ))
        elif remaining:
            # Learners on the company's suppression list get their outcome here and are not sent.
            remaining = await self.suppressions.hold_back(batch, remaining, recorder)
            if remaining:
                fell_back = await handler.process(batch, remaining, recorder)
        await recorder.flush()
        table[key] = BatchProgress.done(recorder.succeeded, fell_back,
                                        [(f.userid, f.retryable) for f in recorder.failures],
                                        recorder.sent_by, recorder.pacing, recorder.suppressed).to_dict()
        await self._complete(batch, recorder, recorder.failures, fell_back, source, succeeded=recorder.succeeded)


    async def _begin(self, batch: BatchDispatched, state: BatchProgress | None,
                     recorder: OutcomeRecorder) -> dict[int, RecipientOutcome]:
        """The outcomes this batch recorded before a crash (counted into ``recorder``); on a first run none,
        once it is durably noted where the batch's outcomes will start in the log."""
        key = batch.kafka_key()
        if state is not None and state.stage == "started":
            assert state.partition is not None and state.offset is not None
            recorded = await self.ctx.ledger.recorded(
                job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no,
                partition=state.partition, from_offset=state.offset,
            )
            log.warning("batch %s resumed after a crash: %d of %d already recorded", key,
                        len(recorded), len(batch.recipients))
            for outcome in recorded.values():
                recorder.count(outcome)
            return recorded
        partition = self.ctx.publisher.partition_of("outcomes", batch.job_id.encode())
        offset = await self.ctx.ledger.end_offset(partition)
        self.ctx.batch_progress[key] = BatchProgress.started(partition, offset).to_dict()
        await self.ctx.app.producer.flush()  # the note must be durable before anyone is served
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


def register(app: faust.App, ctx: StreamContext) -> None:
    from content.email import EmailRenderer, TemplateStore
    from streams.handlers.certificate_batches import CertificateBatchHandler
    from streams.handlers.email_batches import CertificateMailer, EmailBatchHandler
    from streams.handlers.email_providers import EmailProviders

    def share_of_batches() -> float:
        """The fraction of the batch partitions this worker owns: its share of every account's rate."""
        topic = ctx.batches.get_topic_name()
        owned = sum(1 for tp in app.assignor.assigned_actives() if tp.topic == topic)
        return max(1, min(owned, ctx.settings.batch_partitions)) / ctx.settings.batch_partitions

    # One SMTP pool per worker, shared by email and certificate mail.
    providers = EmailProviders(ctx.settings, share=share_of_batches)
    ctx.add_service(providers)
    mailer = CertificateMailer(ctx.settings, EmailRenderer(TemplateStore(ctx.settings.template_dir)), providers.smtp,
                               providers.dkim)
    handlers: dict[str, BatchHandler] = {"email": EmailBatchHandler.build(ctx, providers),
                                         "certificate": CertificateBatchHandler.build(ctx, mailer)}
    runner = BatchRunner(ctx, handlers)

    # concurrency=1 (faust-streaming #606), and one batch at a time through stream.events(): with take_events()
    # a killed worker was seen to have committed offsets past batches it never started (they were then never
    # served). Parallelism comes from the batch's own concurrent sends, from partitions and from more workers.
    @app.agent(ctx.batches, name="process-batches", concurrency=1)
    async def process_batches(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await ctx.guarded(event.message, "process-batches", runner.handle)
