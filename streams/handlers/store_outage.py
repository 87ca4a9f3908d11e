"""A certificate batch's learners waiting for the last store they can use while it is unavailable: the local disk
(full, read-only, an unmounted share), or a cloud store that has no fallback.

Before, each learner whose put found that store unavailable failed at once (retryable), after rendering its PDF:
a job of 10,000 failed within a minute, and an admin had to retry it once the disk had room again.

Now the first learner to find the store unavailable starts one probe of the batch: the store's own check (for
the local disk a file written, synced and removed), after back-off (``OFFLOAD_RETRY_BASE_DELAY`` doubling up to
``OFFLOAD_RETRY_MAX_DELAY``, full jitter). Every learner whose put found the store unavailable waits for that
probe, and puts again once a check passes; learners whose put comes later wait before it. The outage ends at the
first put the store takes. Once the back-off spent on it would pass ``OFFLOAD_STORAGE_OUTAGE_MAX_SECONDS``, the
batch stops waiting: its learners still without a certificate fail as retryable, as before (0: at once).

A waiting learner has nothing in flight (its PDF is in memory, no put is on its way), so a stop or a rebalance
may give the batch up (:attr:`StoreOutage.waiting`); served again, it renders and stores the same bytes under the
same keys.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from adapters.storage.base import StorageUnavailable
from resilience.backoff import backoff

log = logging.getLogger(__name__)


class StoreOutage:
    """The outage of one batch's last store, if it has one: why, how long it was waited for, who waits."""

    def __init__(self, label: str, check: Callable[[], Awaitable[None]], *, max_seconds: float, base_delay: float,
                 max_delay: float, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.label = label  # "job … batch …", for the log
        self.check = check
        self.max_seconds, self.base_delay, self.max_delay = max_seconds, base_delay, max_delay
        self.rng, self.sleep = rng or random.Random(), sleep
        self.reason: str | None = None  # why the store is unavailable, from its first failed put to its next put
        self.down = False  # a put failed, and no check passed since: puts wait
        self.waited = 0.0  # seconds of back-off spent on this outage
        self.given_up: str | None = None  # why the batch no longer waits: the outage outlasted max_seconds
        self.waiting = 0  # learners waiting for the store now
        self._rounds = 0
        self._probe: asyncio.Task[None] | None = None

    def lost(self, reason: str) -> bool:
        """A put found the store unavailable; True when that begins an outage the batch waits out."""
        began = self.reason is None and self.given_up is None
        if began:
            log.warning("%s: %s; its learners wait for the certificate store (up to %.0f s of back-off) without "
                        "failing", self.label, reason, self.max_seconds)
        self.reason, self.down = reason, True
        return began

    def took(self) -> None:
        """A put was taken: the outage, if there was one, is over."""
        if self.reason is not None:
            log.info("%s: the certificate store takes puts again after %.0f s of back-off", self.label, self.waited)
        self.reason, self.down, self.waited, self._rounds = None, False, 0.0, 0

    async def until_up(self) -> str | None:
        """None once a learner may put (no outage, or the store passed a check since it failed); else why it fails
        without a put: the outage outlasted ``max_seconds``."""
        if self.given_up is None and self.down:
            if self._probe is None or self._probe.done():
                self._probe = asyncio.ensure_future(self._wait_for_store())
            self.waiting += 1
            try:
                await asyncio.shield(self._probe)  # a waiter cancelled leaves the probe to the others
            finally:
                self.waiting -= 1
        return self.given_up

    async def _wait_for_store(self) -> None:
        while True:
            self._rounds += 1
            delay = backoff(self._rounds, base=self.base_delay, cap=self.max_delay, rng=self.rng)
            if self.waited + delay > self.max_seconds:
                self.given_up = f"{self.reason} (waited {self.waited:.0f} s)"
                log.warning("%s: certificate store unavailable for too long, the learners left fail: %s", self.label,
                            self.given_up)
                return
            self.waited += delay
            await self.sleep(delay)
            try:
                await self.check()
            except StorageUnavailable as exc:
                self.reason = str(exc)[:1000]
                continue
            self.down = False  # the learners put again; the outage ends at the first put taken
            return

    def close(self) -> None:
        """Stop the probe: its batch ended, or was given up or cancelled."""
        if self._probe is not None:
            self._probe.cancel()
