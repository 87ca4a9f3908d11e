"""The email providers a worker holds and how they are paced: local SMTP always, SES/SendGrid/Mailgun by name,
one rate limiter per provider account and per capped company, SES's 24-hour quota, and this worker's share of
each account's limits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from adapters.email.base import EmailProvider, OnEachResult, OutgoingEmail, ProviderUnavailable, SendResult
from adapters.email.breaker import BreakerPolicy, Breakers, CircuitBreaker, ProviderAccount, account_label
from adapters.email.dkim import DkimSigners, DkimSigningProvider
from adapters.email.dkim_dns import check_published, dns_txt_lookup
from adapters.email.mailgun import MailgunProvider
from adapters.email.pacing import PacedProvider, RateLimiter
from adapters.email.quota import DailyQuota
from adapters.email.sendgrid import SendGridProvider
from adapters.email.ses import SesProvider
from adapters.email.smtp import SmtpProvider
from config.settings import Settings
from resilience.dependencies import Dependencies
from schemas.events import BatchDispatched

log = logging.getLogger(__name__)


class UnconfiguredProvider:
    """A cloud provider this deployment has no credentials or adapter for: unavailable, so jobs fall back."""

    max_batch = 1000

    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send_batch(
        self, messages: Sequence[OutgoingEmail], on_result: OnEachResult | None = None
    ) -> list[SendResult]:
        raise ProviderUnavailable(f"{self.name} is not configured on this worker")


class EmailProviders:
    """The providers a worker holds (local SMTP always, the cloud ones by name) and their rate limiters:
    one per provider account, one per company that has its own cap (``OFFLOAD_COMPANY_RATE_LIMITS``).

    Rates and SES's 24-hour quota are per account, and several worker processes may send for one account:
    before each call the worker takes its share of every limit, the fraction of the batch partitions it owns
    (``share``, from the partition assignment, so a rebalance changes it from the next call on). The shares of
    all workers add up to one, so together they stay within the account's rate however the partitions are
    spread; a worker whose partitions hold no work leaves its share unused, which errs on the side of the
    account's limit.
    """

    def __init__(self, settings: Settings, share: Callable[[], float] | None = None,
                 dependencies: Dependencies | None = None) -> None:
        """``dependencies``: where the relay's and each provider circuit's losses are reported (the worker's)."""
        self.settings = settings
        self._share = share
        self.limiters = {
            name: RateLimiter(name, settings.provider_rate_limits.get(name),
                              f"OFFLOAD_PROVIDER_RATE_LIMITS {name} {settings.provider_rate_limits.get(name, 0):g}/s")
            for name in ("smtp", "ses", "sendgrid", "mailgun")
        }
        self.company_limiters: dict[int, RateLimiter] = {}
        self.ses_daily_quota = (DailyQuota("SES", settings.ses_daily_quota)
                                if settings.ses_daily_quota != "off" else None)
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        self.smtp = SmtpProvider(
            settings.smtp_host,
            settings.smtp_port,
            mail_from=settings.mail_from,
            username=settings.smtp_username,
            password=password,
            starttls=settings.smtp_starttls,
            use_tls=settings.smtp_use_tls,
            ca_file=str(settings.smtp_ca_file) if settings.smtp_ca_file is not None else None,
            connections=settings.smtp_connections,
            timeout=settings.smtp_timeout,
            pipelining=settings.smtp_pipelining,
            chunking=settings.smtp_chunking,
            window=settings.smtp_window,
            dependencies=dependencies,
        )
        secret = settings.aws_secret_access_key.get_secret_value() if settings.aws_secret_access_key else None
        self.ses = SesProvider(
            region=settings.aws_region,
            mail_from=settings.mail_from,
            endpoint_url=settings.aws_endpoint_url,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=secret,
            configuration_set=settings.ses_configuration_set,
            concurrency=settings.ses_concurrency,
        )
        self.cloud: dict[str, EmailProvider] = {
            "ses": self.ses,
            "sendgrid": self._sendgrid(settings),
            "mailgun": self._mailgun(settings),
        }
        # One circuit breaker per cloud provider account and region (shared by every batch of this worker).
        self.breakers = Breakers(BreakerPolicy(failure_threshold=settings.breaker_failure_threshold,
                                               cooldown=settings.breaker_cooldown_seconds),
                                 dependencies=dependencies)
        self.accounts = {
            "ses": ProviderAccount("ses", account_label(settings.aws_access_key_id), settings.aws_region),
            "sendgrid": ProviderAccount("sendgrid", "default", "global"),
            "mailgun": ProviderAccount("mailgun", "default", "global"),
        }
        self._quota_task: asyncio.Task[None] | None = None
        self._dkim_check: asyncio.Task[dict[str, str | None]] | None = None
        # DKIM keys of the SMTP route (the cloud providers sign for themselves); production refuses a bad key.
        self.dkim = DkimSigners(settings.dkim_keys, strict=settings.environment == "production")
        for name in self.dkim.misaligned(settings.mail_from):
            log.warning("DKIM key %s is not aligned with the From address %s: DMARC will not pass", name,
                        settings.mail_from)

    def breaker_for(self, batch: BatchDispatched) -> CircuitBreaker | None:
        """The breaker guarding a cloud batch's provider account (local batches have none)."""
        if batch.route == "local":
            return None
        account = self.accounts.get(batch.provider, ProviderAccount(batch.provider, "default", "global"))
        return self.breakers.for_account(account)

    def _sendgrid(self, settings: Settings) -> EmailProvider:
        if settings.sendgrid_api_key is None:
            return UnconfiguredProvider("sendgrid")
        return SendGridProvider(api_key=settings.sendgrid_api_key.get_secret_value(),
                                base_url=settings.sendgrid_base_url, mail_from=settings.mail_from,
                                mail_from_name=settings.mail_from_name, timeout=settings.http_provider_timeout,
                                concurrency=settings.http_provider_concurrency, limiter=self.limiters["sendgrid"])

    def _mailgun(self, settings: Settings) -> EmailProvider:
        if settings.mailgun_api_key is None or not settings.mailgun_domain:
            return UnconfiguredProvider("mailgun")
        return MailgunProvider(api_key=settings.mailgun_api_key.get_secret_value(), domain=settings.mailgun_domain,
                               base_url=settings.mailgun_url(), mail_from=settings.mail_from,
                               mail_from_name=settings.mail_from_name, timeout=settings.http_provider_timeout,
                               concurrency=settings.http_provider_concurrency, limiter=self.limiters["mailgun"])

    def company_limiter(self, company_id: int) -> RateLimiter | None:
        rate = self.settings.company_rate_limits.get(company_id)
        if not rate:
            return None
        if company_id not in self.company_limiters:
            self.company_limiters[company_id] = RateLimiter(
                f"company {company_id}", rate, f"company {company_id} cap {rate:g}/s")
        return self.company_limiters[company_id]

    def paced(self, provider: EmailProvider, company_id: int) -> PacedProvider:
        limiters = [self.limiters[provider.name]] if provider.name in self.limiters else []
        company = self.company_limiter(company_id)
        # SMTP's 45x replies concern one recipient or session (greylisting, a busy mailbox), not an account
        # rate: delivery's back-off handles them and the limiters keep their rate.
        signer = self.dkim.for_company(company_id) if provider.name == "smtp" else None
        inner = DkimSigningProvider(provider, signer) if signer else provider
        return PacedProvider(inner, [*limiters, *([company] if company else [])],
                             learn_from_throttling=provider.name != "smtp",
                             quota=self.ses_daily_quota if provider.name == "ses" else None,
                             before_each_call=self.take_share)

    def take_share(self) -> float:
        """This worker's share of every account and company limit, as the partition assignment gives it now."""
        share = self._share() if self._share is not None else 1.0
        for limiter in (*self.limiters.values(), *self.company_limiters.values()):
            limiter.set_share(share)
        if self.ses_daily_quota is not None:
            self.ses_daily_quota.set_share(share)
        return share

    def for_batch(self, batch: BatchDispatched) -> tuple[EmailProvider, EmailProvider | None]:
        """Primary provider and the fallback for when it is unavailable (local jobs have none), both paced."""
        smtp = self.paced(self.smtp, batch.company_id)
        if batch.route == "local":
            return smtp, None
        cloud = self.cloud.get(batch.provider) or UnconfiguredProvider(batch.provider)
        return self.paced(cloud, batch.company_id), smtp

    async def read_ses_quota(self) -> None:
        """Pace SES to the account's MaxSendRate and Max24HourSend; an unanswered read keeps what is in force."""
        try:
            quota = await self.ses.read_quota()
        except Exception as exc:  # noqa: BLE001 - credentials, network, a double serving neither call: go on
            log.warning("could not read the SES send quota (%s): %s", type(exc).__name__, exc)
            if self.ses_daily_quota is not None:
                self.ses_daily_quota.unread()
            return
        rate, per_day, source = quota.max_send_rate, quota.max_24_hour_send, quota.source
        if self.ses_daily_quota is not None:
            self.ses_daily_quota.update(per_day, quota.sent_last_24_hours)
        configured = self.settings.provider_rate_limits.get("ses")
        if not self.settings.ses_pace_to_account:
            log.info("SES quota (%s): max send rate %g/s, not followed (OFFLOAD_SES_PACE_TO_ACCOUNT)", source, rate)
            return
        if configured and configured < rate:
            rate, why = configured, f"OFFLOAD_PROVIDER_RATE_LIMITS ses {configured:g}/s"
        else:
            why = f"SES max send rate {rate:g}/s"
        self.limiters["ses"].set_ceiling(rate, why)
        log.info("SES quota (%s): max send rate %g/s, max %g per 24 h, %g sent in the last 24 h", source, rate,
                 per_day, quota.sent_last_24_hours)

    async def _refresh_ses_quota(self) -> None:
        interval = self.settings.ses_quota_refresh_seconds
        while True:
            await self.read_ses_quota()
            read_at = time.monotonic()
            while True:
                await asyncio.sleep(1.0)
                paused = self.ses_daily_quota is not None and self.ses_daily_quota.waiting
                # While sends wait for the 24-hour window to roll on, look again at least every minute.
                if time.monotonic() - read_at >= (min(interval, 60.0) if paused else interval):
                    break

    async def start(self) -> None:
        try:
            await self.smtp.start()
        except ProviderUnavailable as exc:
            # The relay down at start-up is an outage like any other: batches wait for it (with back-off, no
            # attempt spent) instead of the worker refusing to start.
            log.warning("the local relay is unavailable at start-up (%s): batches will wait for it", exc)
        for provider in self.cloud.values():
            await provider.start()
        if self.settings.dkim_dns_check and self.settings.dkim_keys and self._dkim_check is None:
            # In the background (DNS may be slow or absent): it warns in the log, signing goes on regardless.
            self._dkim_check = asyncio.create_task(check_published(
                self.settings.dkim_keys, dns_txt_lookup(self.settings.dkim_dns_timeout)), name="dkim-dns-check")
        if self._quota_task is None:
            self._quota_task = asyncio.create_task(self._refresh_ses_quota(), name="ses-quota")

    async def stop(self) -> None:
        for task in (self._quota_task, self._dkim_check):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._quota_task = self._dkim_check = None
        for provider in (*self.cloud.values(), self.smtp):
            await provider.stop()
