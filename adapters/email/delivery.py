"""Delivery of a batch with retries, throttling back-pressure and fallback to a second (local) provider.

The rules: a transient failure (RETRY) costs one attempt of that recipient's budget; a permanent one
(FAILED) is final at once; throttling is the provider asking us to slow down, so it waits without
spending attempts (but within its own bound); an unreachable provider is retried, then the recipients
still open move to the fallback provider. Each recipient ends with exactly one :class:`FinalResult`,
reported through ``on_result`` the moment it is known, so a crash later loses as little as possible.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from adapters.email.base import EmailProvider, Outcome, OutgoingEmail, ProviderUnavailable, SendResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; throttle rounds default to 10 x max_attempts."""

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_throttle_rounds: int | None = None

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before try number ``attempt + 1``: exponential backoff, full jitter, capped.

        Full jitter (a uniform draw below the exponential ceiling) spreads many workers' retries apart.
        """
        exponent = min(max(attempt, 1) - 1, 32)  # 2**32 * base is past any sane cap; avoids huge floats
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * (2.0**exponent)))

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


async def deliver(
    messages: Sequence[OutgoingEmail],
    *,
    primary: EmailProvider,
    fallback: EmailProvider | None,
    policy: RetryPolicy,
    on_result: OnResult | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> DeliveryReport:
    """Send ``messages`` through ``primary`` (then ``fallback``) until every recipient has a final result."""
    rng = rng or random.Random()
    final: list[FinalResult | None] = [None] * len(messages)
    attempts = [0] * len(messages)  # all tries, both providers
    budget = [0] * len(messages)  # tries spent on the current provider
    provider = primary
    fell_back, fallback_reason = False, None
    open_ = list(range(len(messages)))
    unavailable_rounds = retry_rounds = throttle_rounds = consecutive_throttles = 0

    async def finish(index: int, sent: bool, result: SendResult | None, error: str | None, retryable: bool) -> None:
        done = FinalResult(
            key=messages[index].key,
            sent=sent,
            provider=provider.name,
            provider_message_id=result.provider_message_id if result else None,
            error=error,
            attempts=attempts[index],
            retryable=retryable,
        )
        final[index] = done
        if on_result is not None:
            outcome = on_result(done)
            if inspect.isawaitable(outcome):
                await outcome

    async def give_up_or_fall_back(reason: str) -> bool:
        """Move to the fallback if there is one left; otherwise end every open recipient. True = go on."""
        nonlocal provider, fell_back, fallback_reason, unavailable_rounds, retry_rounds
        nonlocal throttle_rounds, consecutive_throttles
        if fallback is not None and not fell_back:
            log.warning("falling back from %s to %s: %s", primary.name, fallback.name, reason)
            provider, fell_back, fallback_reason = fallback, True, reason
            unavailable_rounds = retry_rounds = throttle_rounds = consecutive_throttles = 0
            for index in open_:
                budget[index] = 0
            return True
        for index in open_:
            await finish(index, False, None, reason, retryable=True)
        open_.clear()
        return False

    while open_:
        retry_next: list[int] = []
        throttled = False
        unavailable: str | None = None
        for start in range(0, len(open_), max(1, provider.max_batch)):
            chunk = open_[start : start + max(1, provider.max_batch)]
            early: set[int] = set()  # recipients made final while the chunk was still being sent

            async def on_each(position: int, result: SendResult, chunk: list[int] = chunk) -> None:
                if result.outcome in (Outcome.SENT, Outcome.FAILED):
                    index = chunk[position]
                    early.add(index)
                    attempts[index] += 1
                    budget[index] += 1
                    sent = result.outcome is Outcome.SENT
                    await finish(index, sent, result, None if sent else result.error, retryable=False)

            try:
                results = await provider.send_batch([messages[i] for i in chunk], on_result=on_each)
            except ProviderUnavailable as exc:
                unavailable = f"{provider.name} unavailable: {exc}"
                # nothing after this point was sent this round (but some of this chunk may have been)
                retry_next.extend(i for i in open_[start:] if i not in early)
                break
            except Exception as exc:  # a provider bug must not lose recipients: count it as a transient failure
                log.exception("%s.send_batch failed", provider.name)
                results = [SendResult(messages[i].key, Outcome.RETRY, error=f"{type(exc).__name__}: {exc}") for i in chunk]
            if len(results) != len(chunk):
                raise RuntimeError(f"{provider.name} returned {len(results)} results for {len(chunk)} messages")
            for index, result in zip(chunk, results):
                if index in early:
                    continue
                if result.outcome is Outcome.THROTTLED:
                    throttled = True
                    retry_next.append(index)
                    continue
                attempts[index] += 1
                budget[index] += 1
                if result.outcome is Outcome.SENT:
                    await finish(index, True, result, None, retryable=False)
                elif result.outcome is Outcome.FAILED:
                    await finish(index, False, result, result.error, retryable=False)
                elif budget[index] >= policy.max_attempts:
                    await finish(index, False, result, result.error, retryable=True)
                else:
                    retry_next.append(index)
        open_ = retry_next
        if not open_:
            break

        if unavailable is not None:
            unavailable_rounds += 1
            if unavailable_rounds >= policy.max_attempts:
                if not await give_up_or_fall_back(unavailable):
                    break
                continue
            await sleep(policy.delay(unavailable_rounds, rng))
            continue
        unavailable_rounds = 0
        if throttled:
            throttle_rounds += 1
            consecutive_throttles += 1
            if throttle_rounds > policy.throttle_rounds:
                reason = f"{provider.name} throttled beyond {policy.throttle_rounds} rounds"
                if not await give_up_or_fall_back(reason):
                    break
                continue
            await sleep(policy.delay(consecutive_throttles, rng))
        else:
            consecutive_throttles = 0
            retry_rounds += 1
            await sleep(policy.delay(retry_rounds, rng))

    return DeliveryReport(
        results=[r for r in final if r is not None], fell_back=fell_back, fallback_reason=fallback_reason
    )
