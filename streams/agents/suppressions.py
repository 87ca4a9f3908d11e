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

from schemas.events.suppression import RecipientUnsubscribed, SuppressionAdded, SuppressionRemoved
from streams.agents.callbacks import CallbackScheduler
from streams.agents.table_copies import register_table_copy
from streams.context import StreamContext
from streams.suppressions import SuppressionList

log = logging.getLogger(__name__)


def register(app: faust.App, ctx: StreamContext, callbacks: CallbackScheduler) -> None:
    suppressions = SuppressionList(ctx.suppressions)

    async def apply_one(event: RecipientUnsubscribed | SuppressionAdded | SuppressionRemoved,
                        _message: faust.types.Message) -> None:
        suppressions.apply(event)
        log.info("suppression list of company %s: %s %s", event.company_id, type(event).__name__, event.subject())
        if isinstance(event, RecipientUnsubscribed):
            url = ctx.settings.unsubscribe_callback_url(event.company_id)
            if url is None:
                log.info("company %s has no unsubscribe callback URL: Moodle is not told", event.company_id)
            else:
                callbacks.queue_unsubscribe(event, url)

    register_table_copy(app, ctx, ctx.suppression_events, name="apply-suppressions", what="suppressions",
                        kinds=(RecipientUnsubscribed, SuppressionAdded, SuppressionRemoved), apply=apply_one)
