"""A cloud certificate store that failed a put, skipped by every batch of the worker until it answers again.

Without it each batch found an outage by itself: its first puts went to the store and waited out their failure
before the batch fell back to local disk. Against a store that refuses connections that is quick; against one
that takes connections and never answers (a firewall that drops, a hung endpoint) each of those puts waits out its
timeouts (three attempts of 5 s to connect, or 30 s to read), and every batch of the job waited with them.

Now a failed put marks the store down: batches store locally at once (each batch's ``JobFellBackToLocal`` says
why), and one task asks the store again in the background (its own check, a small PUT), after back-off from 1 s
doubling up to ``OFFLOAD_BREAKER_COOLDOWN_SECONDS``. The first check that passes brings it back, as does a put
it takes meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from adapters.storage.base import CertificateStore, StorageUnavailable
from resilience.backoff import backoff

log = logging.getLogger(__name__)


class StoreWatch:
    def __init__(self, store: CertificateStore, *, cap: float, base: float = 1.0, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.store = store
        self.cap, self.base, self.rng, self.sleep = cap, base, rng or random.Random(), sleep
        self.down: str | None = None  # why batches skip the store, while they do
        self.since = 0.0  # time.monotonic() of the put that found it down
        self.checks = 0  # checks asked of it during this outage
        self._asking: asyncio.Task[None] | None = None

    def skipped(self) -> str | None:
        """Why a batch should not try the store now, or None."""
        if self.down is None:
            return None
        return (f"{self.down} (skipped: a put failed {time.monotonic() - self.since:.0f} s ago; asked again in the "
                f"background, {self.checks} time(s) so far)")

    def failed(self, reason: str) -> None:
        """A put found the store unavailable (past its own retries)."""
        if self.down is None:
            log.warning("certificate store %s unavailable: %s; every batch stores locally until it answers a check",
                        self.store.backend, reason)
            self.since, self.checks = time.monotonic(), 0
        self.down = reason
        if self._asking is None or self._asking.done():
            self._asking = asyncio.ensure_future(self._ask_again())

    def took(self) -> None:
        """A put or a check was taken: batches use the store again."""
        if self.down is not None:
            log.warning("certificate store %s answers again after %.0f s", self.store.backend,
                        time.monotonic() - self.since)
        self.down = None

    async def _ask_again(self) -> None:
        while self.down is not None:
            await self.sleep(backoff(self.checks + 1, base=self.base, cap=self.cap, jitter="equal", rng=self.rng))
            self.checks += 1
            try:
                await self.store.check()
            except StorageUnavailable as exc:
                if self.down is not None:  # not brought back by a put meanwhile
                    self.down = str(exc)[:1000]
                continue
            self.took()

    def close(self) -> None:
        if self._asking is not None:
            self._asking.cancel()
