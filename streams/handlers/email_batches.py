"""Email work of one batch: render and compose each learner's message, deliver, record each outcome."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence

from adapters.email.base import EmailProvider, OnEachResult, OutgoingEmail, ProviderUnavailable, SendResult
from adapters.email.breaker import (
    BreakerPolicy,
    Breakers,
    CircuitBreaker,
    CircuitChange,
    ProviderAccount,
    account_label,
)
from adapters.email.delivery import DeliveryReport, FinalResult, RetryPolicy, deliver
from adapters.email.mailgun import MailgunProvider
from adapters.email.pacing import PacedProvider, RateLimiter
from adapters.email.sendgrid import SendGridProvider
from adapters.email.ses import SesProvider
from adapters.email.smtp import SmtpProvider
from config.settings import Settings
from content.email import (
    EmailRenderer,
    EmailTemplate,
    TemplateRenderError,
    TemplateStore,
    UnknownTemplate,
    address_problem,
    compose_message,
    message_id_for,
)
from schemas.events import (
    BatchDispatched,
    Event,
    JobFellBackToLocal,
    ProviderCircuitClosed,
    ProviderCircuitOpened,
    Recipient,
    RecipientFailed,
    RecipientSent,
)
from streams.batchwork import OutcomeRecorder
from streams.context import StreamContext
from streams.templates import CompanyTemplates, TemplateUnavailable

log = logging.getLogger(__name__)

# Learners composed before their sends start (see EmailBatchHandler.process).
_SEND_CHUNK = 25
# Providers whose API takes many learners in one call: the whole batch goes to them as one chunk.
_BATCH_FORM = frozenset({"sendgrid", "mailgun"})


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
    one per provider account, one per company that has its own cap (``OFFLOAD_COMPANY_RATE_LIMITS``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limiters = {
            name: RateLimiter(name, settings.provider_rate_limits.get(name),
                              f"OFFLOAD_PROVIDER_RATE_LIMITS {name} {settings.provider_rate_limits.get(name, 0):g}/s")
            for name in ("smtp", "ses", "sendgrid", "mailgun")
        }
        self.company_limiters: dict[int, RateLimiter] = {}
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        self.smtp = SmtpProvider(
            settings.smtp_host,
            settings.smtp_port,
            mail_from=settings.mail_from,
            username=settings.smtp_username,
            password=password,
            starttls=settings.smtp_starttls,
            use_tls=settings.smtp_use_tls,
            connections=settings.smtp_connections,
            timeout=settings.smtp_timeout,
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
                                               cooldown=settings.breaker_cooldown_seconds))
        self.accounts = {
            "ses": ProviderAccount("ses", account_label(settings.aws_access_key_id), settings.aws_region),
            "sendgrid": ProviderAccount("sendgrid", "default", "global"),
            "mailgun": ProviderAccount("mailgun", "default", "global"),
        }
        self._quota_task: asyncio.Task[None] | None = None

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
        return PacedProvider(provider, [*limiters, *([company] if company else [])],
                             learn_from_throttling=provider.name != "smtp")

    def for_batch(self, batch: BatchDispatched) -> tuple[EmailProvider, EmailProvider | None]:
        """Primary provider and the fallback for when it is unavailable (local jobs have none), both paced."""
        smtp = self.paced(self.smtp, batch.company_id)
        if batch.route == "local":
            return smtp, None
        cloud = self.cloud.get(batch.provider) or UnconfiguredProvider(batch.provider)
        return self.paced(cloud, batch.company_id), smtp

    async def read_ses_quota(self) -> None:
        """Pace SES to the account's MaxSendRate; an unanswered read keeps the rate in force and says so."""
        try:
            rate, per_day, source = await self.ses.read_quota()
        except Exception as exc:  # noqa: BLE001 - credentials, network, a double serving neither call: go on
            log.warning("could not read the SES send quota (%s): %s", type(exc).__name__, exc)
            return
        configured = self.settings.provider_rate_limits.get("ses")
        if not self.settings.ses_pace_to_account:
            log.info("SES quota (%s): max send rate %g/s, not followed (OFFLOAD_SES_PACE_TO_ACCOUNT)", source, rate)
            return
        if configured and configured < rate:
            rate, why = configured, f"OFFLOAD_PROVIDER_RATE_LIMITS ses {configured:g}/s"
        else:
            why = f"SES max send rate {rate:g}/s"
        self.limiters["ses"].set_ceiling(rate, why)
        log.info("SES quota (%s): max send rate %g/s, max %g per 24 h", source, rate, per_day)

    async def _refresh_ses_quota(self) -> None:
        while True:
            await self.read_ses_quota()
            await asyncio.sleep(self.settings.ses_quota_refresh_seconds)

    async def start(self) -> None:
        try:
            await self.smtp.start()
        except ProviderUnavailable as exc:
            # The relay down at start-up is an outage like any other: batches wait for it (with back-off, no
            # attempt spent) instead of the worker refusing to start.
            log.warning("the local relay is unavailable at start-up (%s): batches will wait for it", exc)
        for provider in self.cloud.values():
            await provider.start()
        if self._quota_task is None:
            self._quota_task = asyncio.create_task(self._refresh_ses_quota(), name="ses-quota")

    async def stop(self) -> None:
        task, self._quota_task = self._quota_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for provider in (*self.cloud.values(), self.smtp):
            await provider.stop()


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(max_attempts=settings.max_attempts, base_delay=settings.retry_base_delay,
                       max_delay=settings.retry_max_delay, max_outage_seconds=settings.relay_outage_max_seconds)


WORKER = f"{socket.gethostname()}:{os.getpid()}"


def circuit_event(change: CircuitChange) -> Event:
    """The event that records one opening or closing of a breaker."""
    account = change.account
    if change.opened:
        return ProviderCircuitOpened(provider=account.provider, account=account.account, region=account.region,
                                     worker=WORKER, reason=change.reason,
                                     consecutive_failures=change.consecutive_failures,
                                     cooldown_seconds=change.cooldown_seconds)
    return ProviderCircuitClosed(provider=account.provider, account=account.account, region=account.region,
                                 worker=WORKER, reason=change.reason, open_seconds=change.open_seconds or 0.0)


def compose_email(settings: Settings, renderer: EmailRenderer, *, job_id: str, template_id: str | EmailTemplate,
                  template_data: dict, recipient: Recipient, fields: dict | None = None,
                  message_scope: str | None = None) -> OutgoingEmail:
    """One learner's message, rendered and composed; its Message-ID is derived from job (or scope) and learner.

    ``template_id``: a built-in template's id, or the template itself (a company's version, inline content).
    Raises TemplateRenderError / UnknownTemplate when the template cannot render for this learner.
    """
    learner = {**recipient.template_fields(), **(fields or {})}
    if isinstance(template_id, EmailTemplate):
        rendered = renderer.render_template(template_id, learner, template_data)
    else:
        rendered = renderer.render(template_id, learner, template_data)
    message_id = message_id_for(message_scope or job_id, recipient.userid, settings.message_id_domain,
                                key=settings.message_id_key())
    raw = compose_message(rendered, from_address=settings.mail_from, from_name=settings.mail_from_name,
                          to_address=recipient.email, to_name=recipient.full_name, message_id=message_id,
                          headers={"X-Offload-Job": job_id})
    return OutgoingEmail(key=str(recipient.userid), to_address=recipient.email, to_name=recipient.full_name,
                         subject=rendered.subject, text=rendered.text, html=rendered.html, message_id=message_id,
                         raw=raw)


class CertificateMailer:
    """Emails a learner the link to the certificate just issued to them, over the local SMTP relay."""

    def __init__(self, settings: Settings, renderer: EmailRenderer, smtp: EmailProvider) -> None:
        self.settings = settings
        self.renderer = renderer
        self.smtp = smtp
        self.policy = retry_policy(settings)

    async def send(self, batch: BatchDispatched, recipient: Recipient, *, certificate_url: str,
                   code: str) -> tuple[str | None, str | None]:
        """(Message-ID, None) once sent, or (None, why not)."""
        assert batch.notify_template_id is not None
        problem = address_problem(recipient.email)
        if problem:
            return None, f"unusable address: {problem}"
        fields = {"certificate_url": certificate_url, "verification_code": code}
        try:
            message = compose_email(self.settings, self.renderer, job_id=batch.job_id,
                                    template_id=batch.notify_template_id, template_data=batch.template_data,
                                    recipient=recipient, fields=fields, message_scope=f"{batch.job_id}/certificate")
        except (TemplateRenderError, UnknownTemplate) as exc:
            return None, f"template error: {exc}"
        report = await deliver([message], primary=self.smtp, fallback=None, policy=self.policy)
        result = report.results[0]
        return (message.message_id, None) if result.sent else (None, result.error or "not sent")


class EmailBatchHandler:
    def __init__(self, settings: Settings, renderer: EmailRenderer, providers: EmailProviders,
                 templates: CompanyTemplates) -> None:
        self.settings = settings
        self.renderer = renderer
        self.providers = providers
        self.templates = templates
        self.policy = retry_policy(settings)

    @classmethod
    def build(cls, ctx: StreamContext, providers: EmailProviders) -> EmailBatchHandler:
        return cls(ctx.settings, EmailRenderer(TemplateStore(ctx.settings.template_dir)), providers,
                   ctx.company_templates)

    async def process(self, batch: BatchDispatched, recipients: list[Recipient], recorder: OutcomeRecorder) -> bool:
        template = await self.templates.wait_for_batch(batch)
        if isinstance(template, TemplateUnavailable):
            for recipient in recipients:
                await recorder.record(self._failed(batch, recipient, template.error, attempts=0,
                                                   retryable=template.retryable))
            return False
        by_key: dict[str, Recipient] = {}
        message_ids: dict[str, str] = {}
        primary, fallback = self.providers.for_batch(batch)
        chunk_size = len(recipients) if primary.name in _BATCH_FORM else _SEND_CHUNK
        breaker = self.providers.breaker_for(batch)

        async def on_result(result: FinalResult) -> None:
            recipient = by_key[result.key]
            if result.sent:
                await recorder.record(RecipientSent(
                    job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no, userid=recipient.userid,
                    email=recipient.email, provider=result.provider,
                    provider_message_id=result.provider_message_id, message_id=message_ids[result.key],
                    attempts=result.attempts,
                ))
            else:
                await recorder.record(self._failed(batch, recipient, result.error or "failed",
                                                   attempts=result.attempts, retryable=result.retryable,
                                                   provider=result.provider))

        # Each chunk starts sending as soon as it is composed, so composing the next one (CPU) overlaps with
        # the SMTP round trips of this one instead of the sessions idling until the whole batch is composed.
        reports: list[asyncio.Task[DeliveryReport]] = []
        chunk: list[OutgoingEmail] = []
        async with asyncio.TaskGroup() as sending:
            for position, recipient in enumerate(recipients, 1):
                problem = address_problem(recipient.email)
                error = f"unusable address: {problem}" if problem else None
                if error is None:
                    try:
                        message = self._compose(batch, recipient, template)
                    except (TemplateRenderError, UnknownTemplate) as exc:
                        error = f"template error: {exc}"
                if error is not None:
                    await recorder.record(self._failed(batch, recipient, error, attempts=0, retryable=False))
                else:
                    chunk.append(message)
                    by_key[message.key] = recipient
                    message_ids[message.key] = message.message_id
                if chunk and (len(chunk) == chunk_size or position == len(recipients)):
                    reports.append(sending.create_task(
                        deliver(chunk, primary=primary, fallback=fallback, policy=self.policy, on_result=on_result,
                                breaker=breaker)
                    ))
                    chunk = []
                    await asyncio.sleep(0)  # let the chunk's first sends go out before composing on
        recorder.pacing = primary.describe() if isinstance(primary, PacedProvider) else None
        fell_back = [task.result() for task in reports if task.result().fell_back]
        # Openings and closings of any breaker since the last batch, made durable with this batch's outcomes.
        for change in self.providers.breakers.drain():
            await recorder.record_event(circuit_event(change))
        if fell_back and fallback is not None:
            await recorder.record_event(JobFellBackToLocal(
                job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no, from_provider=primary.name,
                to_provider=fallback.name, reason=fell_back[0].fallback_reason or "cloud provider unavailable",
            ))
        return bool(fell_back)

    def _compose(self, batch: BatchDispatched, recipient: Recipient, template: EmailTemplate) -> OutgoingEmail:
        return compose_email(self.settings, self.renderer, job_id=batch.job_id, template_id=template,
                             template_data=batch.template_data, recipient=recipient)

    @staticmethod
    def _failed(batch: BatchDispatched, recipient: Recipient, error: str, *, attempts: int, retryable: bool,
                provider: str | None = None) -> RecipientFailed:
        return RecipientFailed(
            job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no, userid=recipient.userid,
            email=recipient.email, provider=provider, error=error, attempts=attempts, retryable=retryable,
        )
