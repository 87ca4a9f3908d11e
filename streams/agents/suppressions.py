"""apply-suppressions: keep every worker's copy of the suppression lists current, and tell Moodle of unsubscribes.

Each event of the ``suppressions`` topic is written to the global ``suppressions`` table (streams.suppressions),
which process-batches reads for every learner of a bulk or transactional email batch. An unsubscribe is also
queued as a signed callback to the company's Moodle (``OFFLOAD_UNSUBSCRIBE_CALLBACK_URLS``), delivered and retried
by the callback scheduler like a job's callbacks. The table is written before the callback is queued, so a
callback Moodle received means the list already holds the learner.
"""

from __future__ import annotations

import logging

import faust

from schemas.envelope import UndecodableRecord, decode
from schemas.events.suppression import RecipientUnsubscribed, SuppressionAdded, SuppressionRemoved
from streams.agents.callbacks import CallbackScheduler
from streams.context import StreamContext
from streams.suppressions import SuppressionList

log = logging.getLogger(__name__)


def register(app: faust.App, ctx: StreamContext, callbacks: CallbackScheduler) -> None:
    suppressions = SuppressionList(ctx.suppressions)

    async def apply_one(message: faust.types.Message) -> None:
        try:
            event = decode(message.value, message.headers)
        except UndecodableRecord as exc:
            await ctx.dead_letter(message, str(exc), "apply-suppressions")
            return
        if not isinstance(event, RecipientUnsubscribed | SuppressionAdded | SuppressionRemoved):
            await ctx.dead_letter(message, f"unexpected {type(event).__name__} on the suppressions topic",
                                  "apply-suppressions")
            return
        suppressions.apply(event)
        log.info("suppression list of company %s: %s %s", event.company_id, type(event).__name__, event.subject())
        if isinstance(event, RecipientUnsubscribed):
            url = ctx.settings.unsubscribe_callback_url(event.company_id)
            if url is None:
                log.info("company %s has no unsubscribe callback URL: Moodle is not told", event.company_id)
            else:
                callbacks.queue_unsubscribe(event, url)

    # concurrency=1: with more, faust-streaming can commit past an in-flight message (#606).
    @app.agent(ctx.suppression_events, name="apply-suppressions", concurrency=1)
    async def apply_suppressions(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await ctx.guarded(event.message, "apply-suppressions", apply_one)
