"""What SendGrid's and Mailgun's HTTP adapters share: the session, the answer → outcome mapping, the headers.

Mapping of an HTTP answer for one call (a batch of learners):

- 2xx: every learner of the call ``sent`` (accepted); delivery/bounce/complaint come later by webhook.
- 400: permanent. When the provider names the learner (SendGrid ``personalizations.N``) only that learner
  fails and the others are sent again at once; when it does not, the call is split in halves until each
  refused learner stands alone (a few extra calls instead of failing 999 good learners for one bad one).
- 401/403 (and Mailgun's 404 for an unknown domain): configuration (key revoked, wrong domain, no
  permission): :class:`ProviderUnavailable`, so the delivery moves the job to the fallback and the fell-back
  event carries the reason.
- 413: the call was too big: split in halves; a single learner's message that is still too big fails.
- 429: back-pressure, ``THROTTLED`` (no attempt spent); the account limiter is held until
  ``Retry-After`` / ``X-RateLimit-Reset`` and slowed down.
- 5xx, timeouts, dropped connections after sending: ``RETRY`` (one attempt spent).
- connection refused / DNS: :class:`ProviderUnavailable`.

Error texts never carry the API key (it only ever travels in the Authorization header).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from adapters.email.base import OnEachResult, Outcome, OutgoingEmail, ProviderUnavailable, SendResult, report
from adapters.email.pacing import RateLimiter
from resilience.reasons import one_line

log = logging.getLogger(__name__)


def wait_seconds(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds) or ``X-RateLimit-Reset`` (unix time, s or ms)."""
    now = time.time() if now is None else now
    retry_after = headers.get("Retry-After")
    if retry_after is not None:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
    reset = headers.get("X-RateLimit-Reset")
    if reset is not None:
        try:
            value = float(reset)
        except ValueError:
            return None
        if value > 1e11:  # milliseconds since the epoch
            value /= 1000
        return max(0.0, value - now) if value > 1e9 else max(0.0, value)  # small values: seconds from now
    return None


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        import json

        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


# Sends one call for these messages; the concrete adapter builds the request.
Call = Callable[[Sequence[OutgoingEmail]], Awaitable[Answer]]


class HttpEmailProvider:
    """The shared half of an HTTP batch provider; subclasses build the request and read 2xx/400 answers."""

    name = "http"
    max_batch = 1000
    # Answers that say the account or its set-up is wrong, whatever the message: fall back, say why.
    configuration_statuses: tuple[int, ...] = (401, 403)

    def __init__(self, *, timeout: float = 30.0, concurrency: int = 4, limiter: RateLimiter | None = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._calls = asyncio.Semaphore(max(1, concurrency))
        self.limiter = limiter

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- to be provided by the adapter -------------------------------------------------------------
    async def _call(self, session: aiohttp.ClientSession, messages: Sequence[OutgoingEmail]) -> Answer:
        raise NotImplementedError

    def _accepted(self, answer: Answer, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        raise NotImplementedError

    def _refused_positions(self, answer: Answer, messages: Sequence[OutgoingEmail]) -> set[int] | None:
        """Which messages a 400 names (positions in ``messages``); None when it names none."""
        return None

    # --- the mapping --------------------------------------------------------------------------------
    async def send_batch(
        self, messages: Sequence[OutgoingEmail], on_result: OnEachResult | None = None
    ) -> list[SendResult]:
        return await self.send_groups(messages, [range(len(messages))], on_result)

    async def send_groups(
        self, messages: Sequence[OutgoingEmail], groups: Iterable[Sequence[int]], on_result: OnEachResult | None
    ) -> list[SendResult]:
        """Send ``messages`` in calls that each hold learners of one group only (positions in ``messages``), the
        groups one after another, at most ``max_batch`` a call; ``on_result`` hears of each by its position."""
        await self.start()
        results: list[SendResult | None] = [None] * len(messages)

        async def done(index: int, result: SendResult) -> None:
            results[index] = result
            await report(on_result, index, result)

        for group in groups:
            for start in range(0, len(group), self.max_batch):
                await self._send(list(group[start:start + self.max_batch]), messages, done)
        return [r if r is not None else SendResult(m.key, Outcome.RETRY, error="no answer")
                for r, m in zip(results, messages, strict=True)]

    async def _send(self, indexes: list[int], messages: Sequence[OutgoingEmail], done: Done) -> None:
        part = [messages[i] for i in indexes]
        answer = await self._request(part)
        status = answer.status
        self._follow_headers(answer)
        if 200 <= status < 300:
            for index, result in zip(indexes, self._accepted(answer, part), strict=True):
                await done(index, result)
            return
        text = one_line(f"{self.name} {status}: {self._error_text(answer)}")
        if status in self.configuration_statuses:
            raise ProviderUnavailable(f"{self.name} refused the credentials ({status}): {self._error_text(answer)}"
                                      " — check the API key, its permissions and the sending domain")
        if status == 429:
            wait = wait_seconds(answer.headers)
            if self.limiter is not None:
                self.limiter.hold_until(wait if wait is not None else 1.0, f"{self.name} 429 (rate limit reset)")
            await _each(indexes, part, Outcome.THROTTLED, text, done)
        elif status in (400, 413):
            await self._refused(answer, indexes, messages, text, done)
        else:
            outcome = Outcome.RETRY if status >= 500 or status in (408, 409) else Outcome.FAILED
            await _each(indexes, part, outcome, text, done)

    async def _refused(self, answer: Answer, indexes: list[int], messages: Sequence[OutgoingEmail], text: str,
                       done: Done) -> None:
        """400 or 413: fail the learners the provider names and send the others again; when it names nobody,
        split the call in halves until each refused learner (or too-big message) stands alone."""
        part = [messages[i] for i in indexes]
        named = self._refused_positions(answer, part) if answer.status == 400 else None
        if named:
            for position in sorted(named):
                await done(indexes[position], SendResult(part[position].key, Outcome.FAILED, error=text))
            rest = [i for p, i in enumerate(indexes) if p not in named]
            if rest:
                await self._send(rest, messages, done)
            return
        if len(indexes) > 1:
            middle = len(indexes) // 2
            await self._send(indexes[:middle], messages, done)
            await self._send(indexes[middle:], messages, done)
            return
        await _each(indexes, part, Outcome.FAILED, text, done)

    async def _request(self, part: Sequence[OutgoingEmail]) -> Answer:
        assert self._session is not None
        async with self._calls:
            try:
                return await self._call(self._session, part)
            except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
                raise ProviderUnavailable(f"{self.name} unreachable: {one_line(exc)}") from None
            except (TimeoutError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                    aiohttp.ClientOSError) as exc:
                # The request may have left and been accepted: a retry, not "provider down".
                return Answer(599, {}, f"{type(exc).__name__}: {one_line(exc)}".encode())

    def _follow_headers(self, answer: Answer) -> None:
        """An exhausted rate-limit window holds the account until it resets, before any 429."""
        if self.limiter is None or answer.status == 429:
            return
        remaining = answer.headers.get("X-RateLimit-Remaining")
        if remaining is not None and remaining.strip() in ("0", "0.0"):
            wait = wait_seconds({"X-RateLimit-Reset": answer.headers.get("X-RateLimit-Reset")})
            if wait:
                self.limiter.hold_until(wait, f"{self.name} rate-limit window (X-RateLimit-Remaining 0)")

    def _error_text(self, answer: Answer) -> str:
        data = answer.json()
        if isinstance(data, dict):
            if isinstance(data.get("errors"), list):
                return one_line("; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e)
                                       for e in data["errors"]))
            if "message" in data:
                return one_line(data["message"])
        return one_line(answer.body.decode("utf-8", "replace") or "no body")


Done = Callable[[int, SendResult], Awaitable[None]]


async def _each(indexes: list[int], part: Sequence[OutgoingEmail], outcome: Outcome, text: str, done: Done) -> None:
    """The same answer for every learner of a call."""
    for index, msg in zip(indexes, part, strict=True):
        await done(index, SendResult(msg.key, outcome, error=text))
