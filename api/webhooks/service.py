"""Matching verified reports to a job's recipient and publishing them as events, once across every API replica.

Reports are matched to a job's recipient through our deterministic Message-ID, else the provider's message id
(both recorded in job_recipients by the projector), and become RecipientDelivered / RecipientBounced /
RecipientComplained on the outcomes topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp

from api.errors import ApiError
from api.store import ReadStore
from api.suppressions import suppression_for_report
from api.webhooks.reports import Report
from api.webhooks.signatures import Fetch, SnsVerifier, check_sns_url
from config.settings import Settings
from eventlog.publisher import EventPublisher
from schemas.events import RecipientBounced, RecipientComplained, RecipientDelivered
from security.seen import SeenOnce, SeenUnavailable

log = logging.getLogger(__name__)

Learner = tuple[str, int, str]  # the job, the learner's userid and address a report is about
Matched = list[tuple[Report, Learner | None]]  # reports, each with its learner if the read model knows it


class WebhookService:
    def __init__(self, settings: Settings, publisher: EventPublisher, store: ReadStore, fetch: Fetch | None,
                 seen: SeenOnce, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.seen = seen
        self.publisher = publisher
        self.store = store
        self.clock = clock  # one clock for every window check of a webhook, the signature's and the store's
        self._session: aiohttp.ClientSession | None = None
        self.sns = SnsVerifier(fetch or self._https_get, topic_arns=settings.webhook_sns_topic_arns,
                               max_age=settings.webhook_max_age, clock=clock)
        self._fetch = fetch or self._https_get

    @asynccontextmanager
    async def once(self, provider: str, token: str, *, signed_at: float) -> AsyncIterator[None]:
        """Lets a verified webhook through once across every API replica; forgotten again when handling it
        fails, so the provider's own retry of the same delivery is not mistaken for a replay.

        The window is judged again here, with the same clock, before and after the store is asked: verifying
        may have taken a while (an SNS certificate fetch, a slow body), and the store remembers a webhook only
        until signed_at + webhook_max_age, so nothing may be admitted after that moment."""
        max_age = self.settings.webhook_max_age
        self._check_window(provider, signed_at, self.clock())
        try:
            first = await self.seen.first_time(provider, token, expires_at=signed_at + max_age, now=self.clock())
        except SeenUnavailable as exc:
            log.error("%s webhook refused: replay store unavailable (%s)", provider, exc)
            raise  # 503 (json_errors): the provider delivers it again later
        if not first:
            log.warning("%s webhook refused: replayed_request", provider)
            raise ApiError(403, "replayed_request", "this webhook was already received")
        self._check_window(provider, signed_at, self.clock())
        try:
            yield
        except BaseException:
            await self.seen.forget(provider, token)
            raise

    def _check_window(self, provider: str, signed_at: float, now: float) -> None:
        max_age = self.settings.webhook_max_age
        if abs(now - signed_at) > max_age:
            log.warning("%s webhook refused: stale_timestamp", provider)
            raise ApiError(403, "stale_timestamp", f"the webhook's timestamp is outside the {max_age:.0f} s window")

    async def _https_get(self, url: str) -> bytes:
        check_sns_url(url)  # again, right where the request is made
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), trust_env=False)
        async with self._session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise aiohttp.ClientError(f"HTTP {response.status}")
            return await response.content.read(64 * 1024)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def confirm_subscription(self, url: str) -> None:
        check_sns_url(url)
        await self._fetch(url)

    async def match(self, reports: list[Report]) -> Matched:
        """Each report with the job's recipient its message was sent to, if the read model knows that send."""
        return [(report, await self._match(report)) for report in reports]

    async def publish(self, provider: str, matched: Matched) -> tuple[int, int]:
        """Publish the reports matched to a learner (acks=all); return (published, unmatched)."""
        sends, published, unmatched = [], 0, 0
        for report, found in matched:
            if found is None:
                unmatched += 1
                log.info("%s %s report for an unknown message (%s) ignored", provider, report.kind,
                         report.message_id or report.provider_message_id)
                continue
            job_id, userid, email = found
            cls = {"delivered": RecipientDelivered, "bounced": RecipientBounced,
                   "complained": RecipientComplained}[report.kind]
            extra = {"permanent": report.permanent} if cls is RecipientBounced else {}
            event = cls(job_id=job_id, userid=userid, email=email, provider=provider,  # type: ignore[arg-type]
                        message_id=report.message_id, provider_message_id=report.provider_message_id,
                        provider_event_id=report.provider_event_id or "-",
                        detail=(report.detail or None) and str(report.detail)[:2000],
                        occurred_at=report.occurred_at, **extra)
            sends.append(await self.publisher.send(event))
            published += 1
            # A hard bounce or a complaint also puts the learner on the company's suppression list.
            suppression = await suppression_for_report(self.store, event)
            if suppression is not None:
                sends.append(await self.publisher.send(suppression))
        await asyncio.gather(*sends)
        return published, unmatched

    async def _match(self, report: Report) -> Learner | None:
        if report.message_id:
            wanted = report.message_id.strip()
            wanted = wanted if wanted.startswith("<") else f"<{wanted}>"
            rows = await self.store._rows(  # the read store's pooled query helper
                "SELECT job_id, userid, email FROM job_recipients WHERE message_id = %s LIMIT 2", (wanted,))
            if len(rows) == 1:
                return rows[0]["job_id"], rows[0]["userid"], rows[0]["email"]
        if report.provider_message_id:
            rows = await self.store._rows(
                "SELECT job_id, userid, email FROM job_recipients WHERE provider_message_id = %s"
                " AND lower(email) = lower(%s) LIMIT 2", (report.provider_message_id, report.email))
            if len(rows) == 1:
                return rows[0]["job_id"], rows[0]["userid"], rows[0]["email"]
        return None
