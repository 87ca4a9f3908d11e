"""A circuit breaker per cloud provider account and region, shared by every batch a worker sends.

Without it each batch rediscovers an outage by itself: with SES unreachable, a 2,000-learner job made 80
separate fallback decisions, each after its own back-off rounds, and ran at 33 learners/s instead of ~1,200.
With it the first few consecutive failures open the circuit; while it is open batches go straight to the
fallback (local) provider; after ``cooldown`` seconds one batch is let through as a probe, and its answer
closes the circuit again or keeps it open for another cool-down.

What counts as a failure: a round in which the provider could not be reached at all (``ProviderUnavailable``:
connection refused, DNS, credentials) or in which every answer was a transient error (5xx) and none a send.
Any message sent, or refused for its own sake (a permanent 4xx), shows the provider is up and resets the count.
Throttling is back-pressure, not an outage, and counts neither way.

Each opening and closing is kept as a :class:`CircuitChange` until the stream drains it into an event.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from resilience.dependencies import Dependencies

log = logging.getLogger(__name__)


class CircuitState(enum.Enum):
    CLOSED = "closed"  # the provider is used
    OPEN = "open"  # the provider is skipped until the cool-down ends
    PROBING = "probing"  # one batch is trying the provider; the others still skip it


@dataclass(frozen=True, slots=True)
class ProviderAccount:
    """What one breaker guards: a provider, the account (credentials) it is used with, and the region."""

    provider: str
    account: str  # a label, never a credential: see account_label()
    region: str

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.account}:{self.region}"


def account_label(access_key_id: str | None) -> str:
    """A stable name for an account that does not reveal its key id: ``default`` for the credential chain."""
    if not access_key_id:
        return "default"
    return "key-" + hashlib.sha256(access_key_id.encode()).hexdigest()[:10]


@dataclass(frozen=True, slots=True)
class CircuitChange:
    """The circuit of ``account`` opened (``opened``) or closed, and why."""

    account: ProviderAccount
    opened: bool
    reason: str
    consecutive_failures: int
    cooldown_seconds: float
    open_seconds: float | None  # for a closing: how long the circuit was open


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 3  # consecutive failed rounds that open the circuit
    cooldown: float = 30.0  # seconds the circuit stays open before one probe is let through


class CircuitBreaker:
    def __init__(self, account: ProviderAccount, policy: BreakerPolicy,
                 clock: Callable[[], float] = time.monotonic, dependencies: Dependencies | None = None) -> None:
        self.account = account
        self.policy = policy
        self._clock = clock
        self.state = CircuitState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probe_started = 0.0
        self.last_reason = ""
        self.changes: list[CircuitChange] = []
        self._opened = asyncio.Event()  # set while open: batches waiting out a failure stop waiting
        # Reported to the process's dependency record (the worker's health), when one is given.
        self.dependency = f"provider {account.key}"
        self._dependencies = dependencies
        if dependencies is not None:
            dependencies.track(self.dependency)

    def allows(self) -> bool:
        """May a batch use the provider now? Past the cool-down the first caller becomes the probe."""
        if self.state is CircuitState.CLOSED:
            return True
        now = self._clock()
        if self.state is CircuitState.OPEN and now - self._opened_at >= self.policy.cooldown:
            self.state = CircuitState.PROBING
            self._probe_started = now
            log.info("circuit of %s: cool-down over, letting one probe through", self.account.key)
            return True
        if self.state is CircuitState.PROBING and now - self._probe_started >= self.policy.cooldown:
            # The probe never reported (its batch was cancelled or crashed): let another one try.
            self._probe_started = now
            return True
        return False

    def succeeded(self) -> None:
        """The provider answered (a send, or a refusal about the message itself)."""
        if self.state is not CircuitState.CLOSED:
            open_for = self._clock() - self._opened_at
            log.warning("circuit of %s closed: the provider answered again after %.1f s", self.account.key,
                        open_for)
            self.changes.append(CircuitChange(self.account, False, "the provider answered a probe",
                                              self.failures, self.policy.cooldown, round(open_for, 3)))
            if self._dependencies is not None:
                self._dependencies.restored(self.dependency)
            self.state = CircuitState.CLOSED
            self._opened.clear()
        self.failures = 0

    def failed(self, reason: str) -> None:
        """A round could not reach the provider, or got only transient errors."""
        self.failures += 1
        self.last_reason = reason
        if self.state is CircuitState.PROBING or (
                self.state is CircuitState.CLOSED and self.failures >= self.policy.failure_threshold):
            self._open(reason)

    async def sleep_unless_opened(self, sleep: Awaitable[object]) -> None:
        """Wait out a back-off, or less if the circuit opens meanwhile (another batch saw the outage too)."""
        waits = [asyncio.ensure_future(sleep), asyncio.ensure_future(self._opened.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _open(self, reason: str) -> None:
        self.state = CircuitState.OPEN
        self._opened.set()
        self._opened_at = self._clock()
        log.warning("circuit of %s opened after %d consecutive failures (%s): batches go to the fallback "
                    "for %.0f s", self.account.key, self.failures, reason, self.policy.cooldown)
        self.changes.append(CircuitChange(self.account, True, reason, self.failures, self.policy.cooldown, None))
        if self._dependencies is not None:
            self._dependencies.lost(self.dependency, f"circuit open: {reason}")

    def drain(self) -> list[CircuitChange]:
        changes, self.changes = self.changes, []
        return changes


class Breakers:
    """The breakers of one worker, one per provider account and region, created on first use."""

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic,
                 dependencies: Dependencies | None = None) -> None:
        self.policy = policy
        self._clock = clock
        self._dependencies = dependencies
        self._by_key: dict[str, CircuitBreaker] = {}

    def for_account(self, account: ProviderAccount) -> CircuitBreaker:
        breaker = self._by_key.get(account.key)
        if breaker is None:
            breaker = self._by_key[account.key] = CircuitBreaker(account, self.policy, self._clock,
                                                                     self._dependencies)
        return breaker

    def drain(self) -> list[CircuitChange]:
        """Every opening and closing since the last drain, oldest first per account."""
        return [change for breaker in self._by_key.values() for change in breaker.drain()]

    def open_circuits(self) -> list[str]:
        return [key for key, b in self._by_key.items() if b.state is not CircuitState.CLOSED]
