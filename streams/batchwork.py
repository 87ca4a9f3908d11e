"""The batch-work protocol: what a job type's handler does with a batch, and how it records each outcome.

The process-batches agent (streams.agents.batches) drives a batch through its crash-safe steps; the handlers in
streams.handlers do one job type's work and report through an OutcomeRecorder. Both import this module, so
neither imports the other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from resilience.backoff import backoff
from resilience.reasons import reason
from schemas.events import (
    BatchDispatched,
    CertificateIssued,
    Event,
    FailedRecipient,
    Recipient,
    RecipientFailed,
    RecipientOutcome,
    RecipientSent,
)
from schemas.events.suppression import RecipientSuppressed
from streams.context import StreamContext

log = logging.getLogger(__name__)

# How many times a batch's flush produces an event the broker refused before it gives up (the batch is then served
# again from what the log holds).
FLUSH_ATTEMPTS = 4


def _batch_of(event: Event) -> str:
    if isinstance(event, RecipientOutcome):
        return f"{event.job_id}:{event.run}:{event.batch_no}"
    return type(event).__name__


class OutcomeRecorder:
    """Produces a batch's outcome events without waiting on each; counts what succeeded and failed."""

    def __init__(self, ctx: StreamContext) -> None:
        self._publisher = ctx.publisher
        self._pending: list[tuple[Event, asyncio.Future]] = []  # produced, not yet known to be in the log
        self.succeeded = 0
        self.suppressed = 0  # on the company's suppression list: neither sent nor failed
        self.failures: list[FailedRecipient] = []
        self.sent_by: dict[str, int] = {}  # succeeded learners by provider (email) or backend (certificates)
        self.pacing: str | None = None  # what paced its sends, as the batch completed (from paced_by)
        # Set by the handler: what paces its sends now. Asked as the batch completes, not as its sends end: a
        # pause on the provider's quota in between (BatchWaitingForQuota, on the same topic before this batch's
        # BatchCompleted) must not be followed by a BatchCompleted saying what paced the sends before it.
        self.paced_by: Callable[[], str] | None = None
        # Set by the handler: why the batch's sends all wait now, with nothing in flight, for what may last hours
        # (the account's 24-hour quota, an unreachable relay) or the rest of a slow pace, else None. A rebalance
        # or a stop gives such a batch up unacked.
        self.stalled_by: Callable[[], str | None] | None = None

    @property
    def failed(self) -> int:
        return len(self.failures)

    def count(self, outcome: RecipientOutcome) -> None:
        if isinstance(outcome, RecipientFailed):
            self.failures.append(FailedRecipient(userid=outcome.userid, retryable=outcome.retryable))
        elif isinstance(outcome, RecipientSuppressed):
            self.suppressed += 1
        else:
            self.succeeded += 1
            by: str | None = None  # what served the learner: an email provider or a certificate store
            if isinstance(outcome, CertificateIssued):
                by = outcome.backend
            elif isinstance(outcome, RecipientSent):
                by = outcome.provider
            if by is not None:
                self.sent_by[by] = self.sent_by.get(by, 0) + 1

    async def record(self, outcome: RecipientOutcome) -> None:
        self._pending.append((outcome, await self._publisher.send(outcome)))
        self.count(outcome)

    async def record_event(self, event: Event) -> None:
        """A non-outcome event of the batch (e.g. JobFellBackToLocal), awaited with the outcomes."""
        self._pending.append((event, await self._publisher.send(event)))

    async def flush(self, attempts: int = FLUSH_ATTEMPTS) -> None:
        """Until the broker has every event recorded so far. One it refused is produced again (the publisher has
        replaced its producer by then), up to ``attempts`` times in all; then the refusal is raised. Whatever
        ends a flush early, what is not known to be in the log stays pending: no later flush reports it done."""
        pending, self._pending = self._pending, []
        try:
            for attempt in range(1, attempts + 1):
                if not pending:
                    return
                # This batch's own events only: the producer's flush would wait for everything handed to it, the
                # next batches' outcomes (still lingering) and the route agent's batches too.
                results = await asyncio.gather(*(sent for _, sent in pending), return_exceptions=True)
                refused = [(event, sent, result) for (event, sent), result in zip(pending, results, strict=True)
                           if isinstance(result, BaseException)]
                pending = [(event, sent) for event, sent, _ in refused]
                if not refused:
                    return
                if attempt == attempts:
                    raise refused[0][2]
                log.warning("the broker refused %d event(s) of batch %s (%s); producing them again", len(refused),
                            _batch_of(refused[0][0]), reason(refused[0][2]))
                await asyncio.sleep(backoff(attempt, base=0.5, jitter="none"))
                for i, (event, _) in enumerate(pending):
                    pending[i] = (event, await self._publisher.send(event))
        except BaseException:
            self._pending = pending + self._pending
            raise


async def _did_not_fall_back() -> bool:
    return False


def nothing_out() -> asyncio.Task[bool]:
    """What a BatchHandler's ``start`` returns for a batch it sends nothing of (every outcome recorded)."""
    return asyncio.ensure_future(_did_not_fall_back())


class BatchHandler(Protocol):
    """Does one job type's work for the recipients of a batch not yet served. Its sends may outlast its intake, so
    the next batch can start sending before they end.

    ``start`` returns once every message of the batch is composed and handed to its providers, none before
    ``gate`` is set (the batches before have their outcomes in the log; composing may go ahead); the task it
    returns ends once every recipient's outcome is recorded (or raises, after stopping the sends still out),
    and says whether the batch fell back. How far two batches may overlap is streams.agents.batches' rule.
    """

    async def start(self, batch: BatchDispatched, recipients: list[Recipient], recorder: OutcomeRecorder,
                    gate: asyncio.Event | None = None) -> asyncio.Task[bool]:
        ...
