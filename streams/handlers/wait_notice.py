"""Tells the log, once per batch, that its work waits for a dependency (``BatchWaitingForDependency`` on the jobs
topic): the local relay unreachable, or the certificate store taking no files. The projector shows it as the job's
pacing at once, so an admin sees why a job stands still without reading the worker's health; the batch's
``BatchCompleted`` ends it. Once per batch, not per chunk or learner: a batch of 200 waiting is one event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from schemas.events import BatchDispatched, BatchWaitingForDependency

if TYPE_CHECKING:
    from streams.batchwork import OutcomeRecorder  # the render processes import this module: keep Faust out


class WaitNotice:
    def __init__(self, batch: BatchDispatched, recorder: OutcomeRecorder) -> None:
        self.batch = batch
        self.recorder = recorder
        self.said = False

    async def __call__(self, dependency: str, reason: str) -> None:
        if self.said:
            return
        self.said = True
        await self.recorder.record_event(BatchWaitingForDependency(
            job_id=self.batch.job_id, run=self.batch.run, batch_no=self.batch.batch_no, dependency=dependency,
            reason=reason[:1000],
        ))

    def on_outage_of(self, provider: str, dependency: str) -> Callable[[str, str], Awaitable[None]]:
        """A ``BatchDelivery`` ``on_outage`` that says the wait when the provider waited for is ``provider`` (the
        local relay, as ``dependency``); a cloud provider's wait ends in its fallback, or is its quota's
        (``BatchWaitingForQuota``)."""
        async def said(waited_for: str, reason: str) -> None:
            if waited_for == provider:
                await self(dependency, reason)

        return said
