"""Delivery of a batch with retries, throttling back-pressure and fallback to a second (local) provider.

The rules: a transient failure (RETRY) costs one attempt of that recipient's budget; a permanent one
(FAILED) is final at once; throttling is the provider asking us to slow down, so it waits without
spending attempts (but within its own bound); an unreachable provider is retried, then the recipients
still open move to the fallback provider. Without a fallback (the local relay), an outage is waited out
with back-off for up to ``RetryPolicy.max_outage_seconds`` without spending anyone's attempts. A circuit
breaker per provider account (``adapters.email.breaker``) lets a known outage skip the cloud provider at once.
Each recipient ends with exactly one :class:`FinalResult`, reported through ``on_result`` the moment it is
known, so a crash later loses as little as possible.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from adapters.email.base import EmailProvider, Outcome, OutgoingEmail, ProviderUnavailable, SendResult
from adapters.email.breaker import CircuitBreaker
from adapters.email.quota import DailyQuotaReached
from resilience.backoff import backoff

if TYPE_CHECKING:
    from adapters.email.smtp import SmtpProvider

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; throttle rounds default to 10 x max_attempts."""

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_throttle_rounds: int | None = None
    # Without a fallback: how long (seconds of back-off, summed) an unreachable provider is waited for before
    # its recipients fail as retryable. None: give up after max_attempts rounds, as with a fallback.
    max_outage_seconds: float | None = None

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before try number ``attempt + 1``: exponential, capped, full jitter (a uniform draw
        below the ceiling), which spreads many workers' retries of one provider apart."""
        return backoff(attempt, base=self.base_delay, cap=self.max_delay, jitter="full", rng=rng)

    @property
    def throttle_rounds(self) -> int:
        return self.max_throttle_rounds if self.max_throttle_rounds is not None else 10 * self.max_attempts


@dataclass(frozen=True)
class FinalResult:
    """The end of the road for one recipient of the batch."""

    key: str
    sent: bool
    provider: str
    provider_message_id: str | None
    error: str | None
    attempts: int
    retryable: bool  # True when a later retry of the job might still succeed


@dataclass(frozen=True)
class DeliveryReport:
    """All final results (in the order of the messages) and whether the batch moved to the fallback."""

    results: list[FinalResult]
    fell_back: bool
    fallback_reason: str | None


OnResult = Callable[[FinalResult], Awaitable[None] | None]
OnOutage = Callable[[str, str], Awaitable[None]]


class Phase(enum.Enum):
    """Where the delivery of a batch stands after a round of sends: what it does next."""

    SENDING = "sending"  # a round of sends to the current provider goes out
    BACKING_OFF = "backing off"  # transient failures: wait; those recipients spent an attempt each
    THROTTLED = "throttled"  # the provider asked us to slow down: wait; attempts are kept
    PROVIDER_DOWN = "provider down"  # the provider could not be reached: wait; attempts are kept
    FALLING_BACK = "falling back"  # the open recipients move to the fallback provider
    GIVING_UP = "giving up"  # every open recipient ends as a retryable failure
    DONE = "done"  # every recipient has its final result


@dataclass
class Round:
    """What one round of sends left open, and what the provider said as a whole."""

    retry: list[int] = field(default_factory=list)
    throttled: bool = False
    unavailable: str | None = None  # why the provider could not be reached (None: it could)
    answered: bool = False  # some message was sent, or refused for its own sake: the provider is up
    transient: str | None = None  # the last transient error of the round
    unreached: str | None = None  # why some messages never left (the provider went away mid-round)
    quota_reached: str | None = None  # the account's 24-hour quota is used up (and the rest should go local)


class BatchDelivery:
    """Delivers one list of messages; ``run()`` walks the phases until every recipient has a final result."""

    def __init__(
        self,
        messages: Sequence[OutgoingEmail],
        *,
        primary: EmailProvider,
        fallback: EmailProvider | None,
        policy: RetryPolicy,
        on_result: OnResult | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
        breaker: CircuitBreaker | None = None,
        on_outage: OnOutage | None = None,
    ) -> None:
        self.messages = messages
        self.primary, self.fallback, self.policy = primary, fallback, policy
        self.on_result, self.sleep, self.rng = on_result, sleep, rng or random.Random()
        self.breaker = breaker  # guards the primary only; the fallback is the local relay
        # Told (provider name, why) as the delivery begins to wait out an outage without spending attempts.
        self.on_outage = on_outage
        self._outage_began: str | None = None
        self.provider = primary
        self.phase = Phase.SENDING
        self.fell_back = False
        self.fallback_reason: str | None = None
        self.open = list(range(len(messages)))
        self.final: list[FinalResult | None] = [None] * len(messages)
        self.attempts = [0] * len(messages)  # all tries, both providers
        self.budget = [0] * len(messages)  # tries spent on the current provider
        self.unavailable_rounds = self.retry_rounds = self.throttle_rounds = self.consecutive_throttles = 0
        self.outage_waited = 0.0  # seconds of back-off spent waiting for an unreachable provider
        self.waits_for: str | None = None  # why it waits for its provider to be reachable, while it does

    def waiting(self, relay: SmtpProvider | None) -> str | None:
        """Why this delivery waits for its provider to be reachable, with nothing of it in flight, while it does:
        it sleeps between the rounds of an outage (``waits_for``), or it sends through ``relay`` (the local relay)
        and is trying to open a session to it while none is open and the last try failed (a relay that does not
        answer spends its whole connect timeout in each round)."""
        if self.waits_for is not None:
            return self.waits_for
        if relay is not None and self.phase is Phase.SENDING and self.provider.name == relay.name:
            return relay.unreachable_and_idle()
        return None

    async def run(self) -> DeliveryReport:
        while self.open:
            breaker = self._guard()
            if breaker is not None and not breaker.allows():
                # Open before we start, or opened by another batch while we waited: go local at once.
                self._fall_back(f"circuit open for {breaker.account.key}: {breaker.last_reason}")
            self.phase, self.waits_for = Phase.SENDING, None
            done = await self._send_round()
            self.open = done.retry
            if not self.open:
                break
            self.phase, reason, delay = self._next_phase(done)
            self.waits_for = done.unavailable if self.phase is Phase.PROVIDER_DOWN else None
            if self._outage_began is not None:
                began, self._outage_began = self._outage_began, None
                if self.on_outage is not None:
                    await self.on_outage(self.provider.name, began)
            if self.phase is Phase.FALLING_BACK:
                self._fall_back(reason)
            elif self.phase is Phase.GIVING_UP:
                await self._give_up(reason)
            elif self.phase is Phase.PROVIDER_DOWN and (breaker := self._guard()) is not None:
                await breaker.sleep_unless_opened(self.sleep(delay))
            else:
                await self.sleep(delay)
        self.phase, self.waits_for = Phase.DONE, None
        return DeliveryReport(results=[r for r in self.final if r is not None], fell_back=self.fell_back,
                              fallback_reason=self.fallback_reason)

    # -- one round -------------------------------------------------------------------------------------------
    async def _send_round(self) -> Round:
        done = Round()
        size = max(1, self.provider.max_batch)
        for start in range(0, len(self.open), size):
            chunk = self.open[start : start + size]
            early: set[int] = set()  # recipients made final while the chunk was still being sent

            async def on_each(position: int, result: SendResult, chunk: list[int] = chunk,
                              early: set[int] = early) -> None:
                if result.outcome in (Outcome.SENT, Outcome.FAILED):
                    index = chunk[position]
                    early.add(index)
                    done.answered = True
                    self._spend(index)
                    sent = result.outcome is Outcome.SENT
                    await self._finish(index, sent, result, None if sent else result.error, retryable=False)

            try:
                results = await self.provider.send_batch([self.messages[i] for i in chunk], on_result=on_each)
            except DailyQuotaReached as exc:  # not an outage: no breaker failure, straight to the fallback
                done.quota_reached = str(exc)
                done.retry.extend(i for i in self.open[start:] if i not in early)
                break
            except ProviderUnavailable as exc:
                done.unavailable = f"{self.provider.name} unavailable: {exc}"
                # nothing after this point was sent this round (but some of this chunk may have been)
                done.retry.extend(i for i in self.open[start:] if i not in early)
                break
            except Exception as exc:  # a provider bug must not lose recipients: count it as a transient failure
                log.exception("%s.send_batch failed", self.provider.name)
                results = [SendResult(self.messages[i].key, Outcome.RETRY, error=f"{type(exc).__name__}: {exc}")
                           for i in chunk]
            if len(results) != len(chunk):
                raise RuntimeError(f"{self.provider.name} returned {len(results)} results for {len(chunk)} messages")
            for index, result in zip(chunk, results, strict=True):
                if index not in early:
                    await self._judge_one(index, result, done)
        if done.unavailable is None and done.unreached is not None and not done.answered:
            done.unavailable = f"{self.provider.name} unavailable: {done.unreached}"
        self._tell_breaker(done)
        return done

    async def _judge_one(self, index: int, result: SendResult, done: Round) -> None:
        if result.outcome is Outcome.THROTTLED:
            done.throttled = True
            done.retry.append(index)
            return
        if result.outcome is Outcome.UNREACHED:  # never left: the outage is not this recipient's attempt
            done.unreached = result.error or "not reached"
            done.retry.append(index)
            return
        self._spend(index)
        if result.outcome is Outcome.SENT:
            done.answered = True
            await self._finish(index, True, result, None, retryable=False)
        elif result.outcome is Outcome.FAILED:
            done.answered = True
            await self._finish(index, False, result, result.error, retryable=False)
        elif self.budget[index] >= self.policy.max_attempts:
            done.transient = result.error
            await self._finish(index, False, result, result.error, retryable=True)
        else:
            done.transient = result.error
            done.retry.append(index)

    def _tell_breaker(self, done: Round) -> None:
        breaker = self._guard()
        if breaker is None:
            return
        if done.answered:
            breaker.succeeded()
        elif done.unavailable is not None:
            breaker.failed(done.unavailable)
        elif done.transient is not None and not done.throttled:
            breaker.failed(f"{self.provider.name}: only transient errors ({done.transient})")

    # -- between rounds ------------------------------------------------------------------------------------
    def _next_phase(self, done: Round) -> tuple[Phase, str, float]:
        """What to do with the recipients still open: (phase, reason for a fallback or giving up, delay)."""
        policy = self.policy
        forced = self._must_fall_back(done)
        if forced is not None:
            return Phase.FALLING_BACK, forced, 0.0
        if done.unavailable is not None:
            self.unavailable_rounds += 1
            if self._can_fall_back():
                if self.unavailable_rounds >= policy.max_attempts:
                    return Phase.FALLING_BACK, done.unavailable, 0.0
            elif policy.max_outage_seconds is None:
                if self.unavailable_rounds >= policy.max_attempts:
                    return Phase.GIVING_UP, done.unavailable, 0.0
            else:
                delay = policy.delay(self.unavailable_rounds, self.rng)
                if self.outage_waited + delay > policy.max_outage_seconds:
                    return Phase.GIVING_UP, f"{done.unavailable} (waited {self.outage_waited:.0f} s)", 0.0
                if self.unavailable_rounds == 1:
                    log.warning("%s; %d recipients wait for it without spending attempts", done.unavailable,
                                len(self.open))
                    self._outage_began = done.unavailable
                self.outage_waited += delay
                return Phase.PROVIDER_DOWN, "", delay
            return Phase.PROVIDER_DOWN, "", policy.delay(self.unavailable_rounds, self.rng)
        if self.unavailable_rounds:
            log.info("%s answers again after %d rounds", self.provider.name, self.unavailable_rounds)
        self.unavailable_rounds = 0
        if done.throttled:
            self.throttle_rounds += 1
            self.consecutive_throttles += 1
            if self.throttle_rounds > policy.throttle_rounds:
                reason = f"{self.provider.name} throttled beyond {policy.throttle_rounds} rounds"
                return (Phase.FALLING_BACK if self._can_fall_back() else Phase.GIVING_UP), reason, 0.0
            return Phase.THROTTLED, "", policy.delay(self.consecutive_throttles, self.rng)
        self.consecutive_throttles = 0
        self.retry_rounds += 1
        return Phase.BACKING_OFF, "", policy.delay(self.retry_rounds, self.rng)

    def _must_fall_back(self, done: Round) -> str | None:
        """Why the open recipients go to the fallback now, without more rounds: an open circuit, or the account's
        24-hour quota used up (without a fallback the quota is waited for like an outage)."""
        breaker = self._guard()
        if breaker is not None and not breaker.allows():
            return done.unavailable or f"circuit open for {breaker.account.key}"
        if done.quota_reached is not None:
            if self._can_fall_back():
                return done.quota_reached
            done.unavailable = done.quota_reached
        return None

    def _guard(self) -> CircuitBreaker | None:
        """The breaker in charge: only while the primary is used and a fallback exists."""
        if self.breaker is None or self.fallback is None or self.fell_back:
            return None
        return self.breaker

    def _can_fall_back(self) -> bool:
        return self.fallback is not None and not self.fell_back

    def _fall_back(self, reason: str) -> None:
        assert self.fallback is not None
        log.warning("falling back from %s to %s: %s", self.primary.name, self.fallback.name, reason)
        self.provider, self.fell_back, self.fallback_reason = self.fallback, True, reason
        self.unavailable_rounds = self.retry_rounds = self.throttle_rounds = self.consecutive_throttles = 0
        for index in self.open:
            self.budget[index] = 0

    async def _give_up(self, reason: str) -> None:
        for index in self.open:
            await self._finish(index, False, None, reason, retryable=True)
        self.open = []

    # -- one recipient -------------------------------------------------------------------------------------
    def _spend(self, index: int) -> None:
        self.attempts[index] += 1
        self.budget[index] += 1

    async def _finish(self, index: int, sent: bool, result: SendResult | None, error: str | None,
                      retryable: bool) -> None:
        done = FinalResult(
            key=self.messages[index].key,
            sent=sent,
            provider=self.provider.name,
            provider_message_id=result.provider_message_id if result else None,
            error=error,
            attempts=self.attempts[index],
            retryable=retryable,
        )
        self.final[index] = done
        if self.on_result is not None:
            outcome = self.on_result(done)
            if inspect.isawaitable(outcome):
                await outcome


async def deliver(
    messages: Sequence[OutgoingEmail],
    *,
    primary: EmailProvider,
    fallback: EmailProvider | None,
    policy: RetryPolicy,
    on_result: OnResult | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: random.Random | None = None,
    breaker: CircuitBreaker | None = None,
) -> DeliveryReport:
    """Send ``messages`` through ``primary`` (then ``fallback``) until every recipient has a final result."""
    return await BatchDelivery(messages, primary=primary, fallback=fallback, policy=policy, on_result=on_result,
                               sleep=sleep, rng=rng, breaker=breaker).run()
