"""watch-delivery: counts each job's sends, bounces and complaints from the outcomes topic, and pauses the job
(JobPaused on the jobs topic) when its rates pass its company's thresholds (streams.pause_rule).

Why here: bounces and complaints reach us through the provider webhooks, which the API turns into
RecipientBounced / RecipientComplained on the outcomes topic, keyed by job id, beside the job's RecipientSent.
Reading that one topic gives the worker both sides of the rate, in log order, without asking Postgres. Only
permanent bounces count (a transient one may still deliver). Sends are recognised by their ``ce_type`` header
and counted without decoding their JSON (only a job's first send is decoded, for its company); the counts are
written to the table on every report and every ``_FLUSH_EVERY`` sends, so a worker that crashes may count up to
that many sends of a job again or not at all: a rate off by a fraction of a percent of the sample, never a
learner sent twice. Reports about a job that has finished pause nothing (``finished-jobs``, streams.expiry).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping

import faust

from schemas.envelope import UndecodableRecord, decode, header
from schemas.events import JobPaused, RecipientBounced, RecipientComplained, RecipientSent
from streams.context import StreamContext
from streams.pause_rule import DeliveryCounts, should_pause

log = logging.getLogger(__name__)

_SENT = RecipientSent.ce_type.encode()
_REPORTS = {RecipientBounced.ce_type.encode(), RecipientComplained.ce_type.encode()}
_FLUSH_EVERY = 100


def _job_id(message: faust.types.Message) -> str:
    """An outcome's key: its job id."""
    return message.key.decode() if isinstance(message.key, bytes) else str(message.key)


class DeliveryWatch:
    def __init__(self, ctx: StreamContext, finished: Mapping[str, float]) -> None:
        self.ctx = ctx
        self.finished = finished  # job id -> when it finished (streams.expiry): late reports pause nothing
        self._unsaved: Counter[str] = Counter()  # sends counted but not yet in the table, by job

    def _counts(self, job_id: str) -> DeliveryCounts:
        stored = self.ctx.delivery_watch.get(job_id)
        counts = DeliveryCounts.from_dict(stored) if stored else DeliveryCounts()
        unsaved = self._unsaved.pop(job_id, 0)
        return DeliveryCounts(counts.company_id, counts.sent + unsaved, counts.bounced, counts.complained,
                              counts.base_sent, counts.base_bounced, counts.base_complained)

    def counted_quietly(self, message: faust.types.Message) -> bool:
        """The common case, taken in the agent's loop without a coroutine: a record the watch ignores, or a send
        of a job already in the table, counted without decoding and without a table write. False: ``handle``."""
        ce_type = header(message.headers, "ce_type")
        if ce_type != _SENT:
            return ce_type not in _REPORTS
        job_id = _job_id(message)
        if job_id in self.ctx.delivery_watch and self._unsaved[job_id] + 1 < _FLUSH_EVERY:
            self._unsaved[job_id] += 1
            return True
        return False

    async def handle(self, message: faust.types.Message) -> None:
        """A record ``counted_quietly`` did not take: a report, or a send that is a job's first or flushes."""
        job_id = _job_id(message)
        try:
            event = decode(message.value, message.headers)
        except UndecodableRecord:
            return  # the projector and the ledger report undecodable outcomes
        counts = self._counts(job_id)
        if isinstance(event, RecipientSent):
            company = counts.company_id if counts.company_id is not None else event.company_id
            counts = DeliveryCounts(company, counts.sent + 1, counts.bounced, counts.complained,
                                    counts.base_sent, counts.base_bounced, counts.base_complained)
        elif isinstance(event, RecipientBounced) and event.permanent:  # a transient bounce may yet deliver
            counts = DeliveryCounts(counts.company_id, counts.sent, counts.bounced + 1, counts.complained,
                                    counts.base_sent, counts.base_bounced, counts.base_complained)
        elif isinstance(event, RecipientComplained):
            counts = DeliveryCounts(counts.company_id, counts.sent, counts.bounced, counts.complained + 1,
                                    counts.base_sent, counts.base_bounced, counts.base_complained)
        if isinstance(event, RecipientBounced | RecipientComplained) and job_id not in self.finished:
            counts = await self._decide(job_id, counts)
        self.ctx.delivery_watch[job_id] = counts.to_dict()

    async def _decide(self, job_id: str, counts: DeliveryCounts) -> DeliveryCounts:
        settings = self.ctx.settings
        bounce, complaint = settings.pause_thresholds_for(counts.company_id)
        decision = should_pause(counts, bounce_threshold=bounce, complaint_threshold=complaint,
                                min_sample=settings.pause_min_sample)
        if decision is None:
            return counts
        await self.ctx.publisher.send_and_wait(JobPaused(
            job_id=job_id, company_id=counts.company_id, reason=decision.reason, sent=decision.sent,
            bounced=decision.bounced, complained=decision.complained, bounce_rate=decision.bounce_rate,
            complaint_rate=decision.complaint_rate, bounce_threshold=bounce, complaint_threshold=complaint,
            min_sample=settings.pause_min_sample,
        ))
        log.warning("job %s paused: %s", job_id, decision.reason)
        return counts.rebased()


def register(app: faust.App, ctx: StreamContext, finished: Mapping[str, float]) -> None:
    watch = DeliveryWatch(ctx, finished)
    outcomes = app.topic(ctx.settings.topic("outcomes"), key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=ctx.settings.outcome_partitions, internal=False)

    @app.agent(outcomes, name="watch-delivery", concurrency=1)
    async def watch_delivery(stream: faust.StreamT) -> None:
        async for event in stream.events():
            if not watch.counted_quietly(event.message):  # most records end here, with nothing to retry
                await ctx.guarded(event.message, "watch-delivery", watch.handle)
