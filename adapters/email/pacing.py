"""Pacing to the provider account and to each company: rate limiters and the provider wrapper that obeys them.

One :class:`RateLimiter` per provider account (shared by every company on this worker) and one per company
that has its own cap. A limiter spaces calls out (GCRA / "virtual scheduling": a call of ``n`` messages
moves the next free moment on by ``n / rate``), so over any stretch of time the messages sent stay at or
under the rate, plus at most one call's worth. Its rate comes from the account (SES ``GetAccount`` →
``MaxSendRate``; SendGrid/Mailgun ``X-RateLimit-*`` headers), from settings, or from neither (no cap).

Several worker processes share one account: each limiter is given this worker's share of it
(:meth:`RateLimiter.set_share`, the fraction of the batch partitions the worker owns, see
``streams.handlers.email_providers``), so the workers' rates add up to the account's at most.

Throttling answers slow it down: the rate halves (from the rate actually being sent at when there was no
cap) and a ``Retry-After``/``X-RateLimit-Reset`` holds every call until then; each throttle-free call then
raises the rate by 10 % until it is back at the account's ceiling, and the slowdown is lifted. Each limiter
says what paces it (``describe()``), e.g. "paced by SES max send rate 14/s", for the job's progress.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence

from adapters.email.base import EmailProvider, OnEachResult, Outcome, OutgoingEmail, SendResult, report
from adapters.email.quota import DailyQuota

_MIN_RATE = 0.5  # messages/s: throttling never slows an account below this
_RECOVERY = 1.10  # after each call without throttling, the slowed rate grows by this factor
_WINDOW = 5.0  # seconds of history kept to know the rate actually sent at


class RateLimiter:
    """Messages per second for one account or one company, changing with what the provider says."""

    def __init__(self, label: str, rate: float | None = None, reason: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self._clock = clock
        self._ceiling: float | None = rate if rate else None  # what the account / settings allow
        self._ceiling_reason = reason or (f"{label} cap {rate:g}/s" if rate else "")
        self._share = 1.0  # of the account's (or company's) rate that this worker may use
        self._slowed: float | None = None  # below the ceiling after throttling
        self._next = 0.0  # the clock time the next call may start
        self._held_until = 0.0
        self._hold_reason = ""
        # Recent (start, messages) of each call, to know the rate actually sent at; starts never decrease.
        self._sent: deque[tuple[float, int]] = deque()
        self.throttles = 0

    # --- what paces it ------------------------------------------------------------------------------
    @property
    def ceiling(self) -> float | None:
        """This worker's part of the account's (or settings') limit; None: no cap."""
        return None if self._ceiling is None else self._ceiling * self._share

    @property
    def rate(self) -> float | None:
        """The rate in force now (None: no cap)."""
        ceiling = self.ceiling
        if self._slowed is not None:
            return self._slowed if ceiling is None else min(self._slowed, ceiling)
        return ceiling

    def describe(self) -> str:
        if self._clock() < self._held_until:
            return f"paused by {self._hold_reason}"
        rate = self.rate
        if rate is None:
            return f"{self.label}: not paced"
        ceiling = self.ceiling
        if self._slowed is not None and (ceiling is None or self._slowed < ceiling):
            return f"slowed after {self.label} throttling to {rate:.3g}/s"
        if self._share < 1.0:
            return f"paced by {self._ceiling_reason}, this worker's share {self._share:.0%}: {rate:.3g}/s"
        return f"paced by {self._ceiling_reason}"

    def set_ceiling(self, rate: float | None, reason: str) -> None:
        """The account's own limit (e.g. from GetAccount or a rate-limit header); None or 0 lifts it."""
        self._ceiling = rate if rate else None
        self._ceiling_reason = reason
        self._lift_slowdown_at_ceiling()

    def set_share(self, share: float) -> None:
        """This worker's fraction (0, 1] of the limit: the workers sharing one account split its rate."""
        if not 0.0 < share <= 1.0:
            raise ValueError(f"a worker's share of a rate must be in (0, 1], not {share}")
        self._share = share
        self._lift_slowdown_at_ceiling()

    def _lift_slowdown_at_ceiling(self) -> None:
        ceiling = self.ceiling
        if self._slowed is not None and ceiling is not None and self._slowed >= ceiling:
            self._slowed = None

    def hold_until(self, seconds_from_now: float, reason: str) -> None:
        """Nobody calls the provider for this long (Retry-After / X-RateLimit-Reset)."""
        until = self._clock() + max(0.0, seconds_from_now)
        if until > self._held_until:
            self._held_until, self._hold_reason = until, reason

    # --- feedback -----------------------------------------------------------------------------------
    def throttled(self) -> None:
        """The provider refused for rate: halve the rate (starting from what was actually being sent)."""
        self.throttles += 1
        base = self.rate or self.observed_rate() or 10.0
        self._slowed = max(_MIN_RATE, base / 2)

    def succeeded(self) -> None:
        """A call without throttling: speed back up towards the ceiling, then lift the slowdown."""
        if self._slowed is None:
            return
        self._slowed *= _RECOVERY
        ceiling = self.ceiling
        if ceiling is not None and self._slowed >= ceiling:
            self._slowed = None
        elif ceiling is None and self._slowed > 4 * max(1.0, self.observed_rate()):
            self._slowed = None  # far above what we send anyway: the cap no longer binds

    def observed_rate(self, window: float = 5.0) -> float:
        """Messages per second reserved over the last ``window`` seconds."""
        now = self._clock()
        self._forget_before(now - window)
        if not self._sent:
            return 0.0
        span = max(1.0, now - self._sent[0][0])
        return sum(n for _, n in self._sent) / span

    # --- use ----------------------------------------------------------------------------------------
    def delay_for(self, messages: int) -> float:
        """Reserve a start time for a call of ``messages``; returns how long to wait for it."""
        now = self._clock()
        start = max(now, self._next, self._held_until)
        rate = self.rate
        self._next = start + (messages / rate if rate else 0.0)
        self._sent.append((start, messages))
        self._forget_before(now - _WINDOW)  # only the last seconds matter (observed_rate)
        return start - now

    def _forget_before(self, moment: float) -> None:
        sent = self._sent
        while sent and sent[0][0] < moment:
            sent.popleft()

    def chunk(self) -> int | None:
        """Most messages one call should carry so a call never holds more than a second's worth."""
        rate = self.rate
        return max(1, math.floor(rate)) if rate else None


class PacedProvider:
    """A provider seen through limiters: every call waits its turn, throttling slows the limiters down."""

    def __init__(self, inner: EmailProvider, limiters: Sequence[RateLimiter],
                 sleep: Callable[[float], object] = asyncio.sleep, *, learn_from_throttling: bool = True,
                 quota: DailyQuota | None = None, before_each_call: Callable[[], object] | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_batch = inner.max_batch
        self.limiters = list(limiters)
        self._sleep = sleep
        self.quota = quota  # the account's 24-hour sending quota (SES Max24HourSend), when it has one
        self.quota_waits = 0  # calls through this provider waiting in the quota (for room, or its first read)
        self.rate_waits = 0  # calls through this provider sleeping until the limiters let their next part go
        # Run before each call is reserved: the worker takes its current share of the limits there, so a
        # rebalance that changes its partitions changes its rate from the next call, not the next batch.
        self._before_each_call = before_each_call
        # False for a provider whose throttling answers are about one recipient or session, not the account
        # (an SMTP relay's 451 greylisting): delivery's back-off handles those; the rate stays as it is.
        self._learn = learn_from_throttling

    def describe(self) -> str:
        """What paces this provider for this company now: a paused 24-hour quota, else the slowest limiter."""
        if self.quota is not None and self.quota.paused_by:
            return f"paused: {self.quota.paused_by}"
        capped = [limiter for limiter in self.limiters if limiter.rate is not None]
        if not capped:
            return self.limiters[0].describe() if self.limiters else f"{self.name}: not paced"
        return min(capped, key=lambda limiter: limiter.rate or math.inf).describe()

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def send_batch(
        self, messages: Sequence[OutgoingEmail], on_result: OnEachResult | None = None
    ) -> list[SendResult]:
        results: list[SendResult] = []
        position = 0
        while position < len(messages):
            if self._before_each_call is not None:
                self._before_each_call()
            sizes = [size for size in (limiter.chunk() for limiter in self.limiters) if size]
            size = min([len(messages) - position, *sizes])
            if self.quota is not None:  # waits while the 24-hour quota is used up, or raises DailyQuotaReached
                self.quota_waits += 1
                try:
                    size = await self.quota.take(size)
                finally:
                    self.quota_waits -= 1
            part = messages[position : position + size]
            wait = max([limiter.delay_for(len(part)) for limiter in self.limiters], default=0.0)
            if wait > 0:
                self.rate_waits += 1
                try:
                    await self._sleep(wait)  # type: ignore[misc]
                finally:
                    self.rate_waits -= 1

            async def shifted(index: int, result: SendResult, offset: int = position) -> None:
                await report(on_result, offset + index, result)

            part_results = await self.inner.send_batch(part, on_result=shifted if on_result else None)
            throttled = any(r.outcome is Outcome.THROTTLED for r in part_results)
            if self._learn:
                for limiter in self.limiters:
                    limiter.throttled() if throttled else limiter.succeeded()
            results.extend(part_results)
            position += size
            if throttled:  # the rest would be refused too: hand them back as throttled, the caller waits
                results.extend(SendResult(m.key, Outcome.THROTTLED, error=f"{self.name} throttling")
                               for m in messages[position:])
                break
        return results
