"""Email work of one batch: render and compose each learner's message, deliver, record each outcome."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from adapters.email.base import EmailProvider, OutgoingEmail
from adapters.email.breaker import CircuitChange
from adapters.email.delivery import BatchDelivery, DeliveryReport, FinalResult, Phase, RetryPolicy
from adapters.email.dkim import DkimSigners, DkimSigningProvider
from adapters.email.pacing import PacedProvider
from adapters.email.quota import DailyQuota
from adapters.email.smtp import SMTP_RELAY, SmtpProvider
from config.settings import Settings
from content.email import (
    EmailRenderer,
    EmailTemplate,
    TemplateRenderError,
    TemplateStore,
    UnknownTemplate,
    address_problem,
    ascii_address,
    compose_message,
    message_id_for,
)
from resilience.reasons import reason
from schemas.events import (
    BatchDispatched,
    BatchWaitingForQuota,
    Event,
    JobFellBackToLocal,
    ProviderCircuitClosed,
    ProviderCircuitOpened,
    Recipient,
    RecipientFailed,
    RecipientSent,
)
from security.unsubscribe import list_unsubscribe_headers
from streams.batchwork import OutcomeRecorder, nothing_out
from streams.context import StreamContext
from streams.handlers.email_providers import EmailProviders
from streams.handlers.wait_notice import WaitNotice
from streams.templates import CompanyTemplates, TemplateUnavailable

log = logging.getLogger(__name__)

# Learners composed before their sends start (see EmailBatchHandler.start).
_SEND_CHUNK = 25
# Providers whose API takes many learners in one call: the whole batch goes to them as one chunk.
_BATCH_FORM = frozenset({"sendgrid", "mailgun"})


async def _say_when_waiting(batch: BatchDispatched, provider: str, quota: DailyQuota,
                            recorder: OutcomeRecorder) -> None:
    """BatchWaitingForQuota, once, if the batch's provider pauses its sends on the account's 24-hour quota while
    the batch is out: the job's pacing says so at once, not only when a batch completes."""
    why = await quota.paused()
    await recorder.record_event(BatchWaitingForQuota(job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no,
                                                     provider=provider, reason=why))


def _stall_reason(paced: list[PacedProvider], deliveries: list[BatchDelivery],
                  relay: SmtpProvider) -> Callable[[], str | None]:
    """Why the batch's sends wait, with nothing of them in flight, while they do: every chunk still open waits,
    in the 24-hour quota of its account or until a rate limit lets its next part go (this batch's own
    PacedProviders, ``paced``, count their calls in either), or for its provider to be reachable again
    (``BatchDelivery.waiting``). Such a wait may last hours (the quota; a relay outage, waited out for up to
    OFFLOAD_RELAY_OUTAGE_MAX_SECONDS) or the rest of a slowly paced batch; giving the batch up then sends nobody
    twice."""
    def why() -> str | None:
        still_open = [delivery for delivery in deliveries if delivery.phase is not Phase.DONE]
        down = [waits for delivery in still_open if (waits := delivery.waiting(relay)) is not None]
        # While the relay is unreachable and idle, its chunks are all in ``down``, pacing sleeps included.
        relay_idle = relay.unreachable_and_idle() is not None
        in_quota = sum(provider.quota_waits for provider in paced)
        in_pace = sum(provider.rate_waits for provider in paced if not (relay_idle and provider.name == relay.name))
        if not still_open or len(down) + in_quota + in_pace < len(still_open):
            return None
        for provider in paced:
            if provider.quota_waits and provider.quota is not None:
                return provider.quota.paused_by or f"{provider.quota.label} 24-hour quota not read yet"
        if down:
            return down[0]
        return next(provider.describe() for provider in paced if provider.rate_waits)
    return why


async def _stop(tasks: list[asyncio.Task[DeliveryReport]]) -> None:
    """Cancel the chunks still sending and wait until they have stopped."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


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
                  message_scope: str | None = None, headers: dict[str, str] | None = None) -> OutgoingEmail:
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
                          headers={"X-Offload-Job": job_id, **(headers or {})})
    # Providers get the domain IDNA-encoded, as To: has it (the caller checked the address with address_problem).
    return OutgoingEmail(key=str(recipient.userid), to_address=ascii_address(recipient.email),
                         to_name=recipient.full_name,
                         subject=rendered.subject, text=rendered.text, html=rendered.html, message_id=message_id,
                         raw=raw, headers=tuple((headers or {}).items()))


class CertificateMailer:
    """Emails a learner the link to the certificate just issued to them, over the local SMTP relay."""

    def __init__(self, settings: Settings, renderer: EmailRenderer, smtp: SmtpProvider,
                 dkim: DkimSigners | None = None) -> None:
        self.settings = settings
        self.renderer = renderer
        self.smtp = smtp
        self.dkim = dkim
        self.policy = retry_policy(settings)

    async def send(self, batch: BatchDispatched, recipient: Recipient, *, certificate_url: str, code: str,
                   out: set[BatchDelivery], notice: WaitNotice) -> tuple[str | None, str | None]:
        """(Message-ID, None) once sent, or (None, why not). The delivery is in ``out`` while it runs, so the
        batch can tell when its mails all wait for an unreachable relay; ``notice`` says once that they do."""
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
        signer = self.dkim.for_company(batch.company_id) if self.dkim else None
        smtp = DkimSigningProvider(self.smtp, signer) if signer else self.smtp
        delivery = BatchDelivery([message], primary=smtp, fallback=None, policy=self.policy,
                                 on_outage=notice.on_outage_of(self.smtp.name, SMTP_RELAY))
        out.add(delivery)
        try:
            report = await delivery.run()
        finally:
            out.discard(delivery)
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

    async def start(self, batch: BatchDispatched, recipients: list[Recipient], recorder: OutcomeRecorder,
                    gate: asyncio.Event | None = None) -> asyncio.Task[bool]:
        """Compose the batch and hand every chunk to the providers, none before ``gate`` is set (the chunks
        composed meanwhile wait, so the sessions find them ready); the task returned ends once every learner's
        outcome is recorded (streams.batchwork.BatchHandler), and says whether the batch fell back."""
        template = await self.templates.wait_for_batch(batch)
        if isinstance(template, TemplateUnavailable):
            for recipient in recipients:
                await recorder.record(self._failed(batch, recipient, template.error, attempts=0,
                                                   retryable=template.retryable))
            return nothing_out()
        by_key: dict[str, Recipient] = {}
        message_ids: dict[str, str] = {}
        primary, fallback = self.providers.for_batch(batch)
        chunk_size = len(recipients) if primary.name in _BATCH_FORM else _SEND_CHUNK
        breaker = self.providers.breaker_for(batch)
        on_result = self._on_result(batch, recorder, by_key, message_ids)
        deliveries: list[BatchDelivery] = []
        paced = [provider for provider in (primary, fallback) if isinstance(provider, PacedProvider)]
        recorder.stalled_by = _stall_reason(paced, deliveries, self.providers.smtp)

        # Each chunk starts sending as soon as it is composed, so composing the next one (CPU) overlaps with
        # the SMTP round trips of this one instead of the sessions idling until the whole batch is composed.
        # The chunks wait for SMTP sessions in the order they were handed over (SmtpProvider), so a batch
        # started while this one's last chunks are out queues behind them and takes each session they free.
        reports: list[asyncio.Task[DeliveryReport]] = []
        chunk: list[OutgoingEmail] = []
        held: list[list[OutgoingEmail]] = []  # composed before the gate opened

        on_outage = WaitNotice(batch, recorder).on_outage_of(self.providers.smtp.name, SMTP_RELAY)

        def hand_out(messages: list[OutgoingEmail]) -> None:
            delivery = BatchDelivery(messages, primary=primary, fallback=fallback, policy=self.policy,
                                     on_result=on_result, breaker=breaker, on_outage=on_outage)
            deliveries.append(delivery)
            reports.append(asyncio.ensure_future(delivery.run()))

        try:
            for position, recipient in enumerate(recipients, 1):
                message = self._compose_or_why_not(batch, recipient, template)
                if isinstance(message, str):
                    await recorder.record(self._failed(batch, recipient, message, attempts=0, retryable=False))
                else:
                    chunk.append(message)
                    by_key[message.key] = recipient
                    message_ids[message.key] = message.message_id
                if chunk and (len(chunk) == chunk_size or position == len(recipients)):
                    held.append(chunk)
                    chunk = []
                    if gate is None or gate.is_set():
                        for ready in held:
                            hand_out(ready)
                        held = []
                    await asyncio.sleep(0)  # let the chunk's first sends go out before composing on
            if held:
                assert gate is not None
                await gate.wait()
                for ready in held:
                    hand_out(ready)
        except BaseException:
            await _stop(reports)  # a bug or a cancel: no sends left running for a batch nobody finishes
            raise
        return asyncio.ensure_future(self._settle(batch, primary, fallback, reports, recorder))

    def _on_result(self, batch: BatchDispatched, recorder: OutcomeRecorder, by_key: dict[str, Recipient],
                   message_ids: dict[str, str]) -> Callable[[FinalResult], Awaitable[None]]:
        """Records each learner's outcome the moment delivery knows it."""
        async def on_result(result: FinalResult) -> None:
            recipient = by_key[result.key]
            if result.sent:
                await recorder.record(RecipientSent(
                    job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no, userid=recipient.userid,
                    email=recipient.email, provider=result.provider,
                    provider_message_id=result.provider_message_id, message_id=message_ids[result.key],
                    attempts=result.attempts, company_id=batch.company_id,
                ))
            else:
                await recorder.record(self._failed(batch, recipient, result.error or "failed",
                                                   attempts=result.attempts, retryable=result.retryable,
                                                   provider=result.provider))
        return on_result

    async def _settle(self, batch: BatchDispatched, primary: EmailProvider, fallback: EmailProvider | None,
                      reports: list[asyncio.Task[DeliveryReport]], recorder: OutcomeRecorder) -> bool:
        """Once every chunk is delivered: the batch's pacing, breaker changes and fallback on record."""
        quota = primary.quota if isinstance(primary, PacedProvider) else None
        waiting = asyncio.ensure_future(_say_when_waiting(batch, primary.name, quota, recorder)) if quota else None
        try:
            done = await asyncio.gather(*reports)
        except BaseException:
            await _stop(reports)  # one chunk failed (a bug, an outcome that could not be produced) or cancelled
            raise
        finally:
            # Nothing is left to wait for. Its closure holds the deliveries, whose on_result holds the recorder: a
            # cycle that kept each batch's messages, results and recipients alive until the cyclic collector
            # found them (40,000 objects every few seconds at 2,000 learners/s), not freed as the batch ends.
            recorder.stalled_by = None
            if waiting is not None:
                waiting.cancel()
                (said,) = await asyncio.gather(waiting, return_exceptions=True)
                if isinstance(said, Exception):  # not on record: the job's pacing says so at the batch's end
                    log.warning("batch %s:%d:%d waited for the %s quota, which could not be recorded: %s",
                                batch.job_id, batch.run, batch.batch_no, primary.name, reason(said))
        recorder.paced_by = primary.describe if isinstance(primary, PacedProvider) else None
        fell_back = [report for report in done if report.fell_back]
        # Openings and closings of any breaker since the last batch, made durable with this batch's outcomes.
        for change in self.providers.breakers.drain():
            await recorder.record_event(circuit_event(change))
        if fell_back and fallback is not None:
            await recorder.record_event(JobFellBackToLocal(
                job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no, from_provider=primary.name,
                to_provider=fallback.name, reason=fell_back[0].fallback_reason or "cloud provider unavailable",
            ))
        return bool(fell_back)

    def _compose_or_why_not(self, batch: BatchDispatched, recipient: Recipient,
                            template: EmailTemplate) -> OutgoingEmail | str:
        """The learner's message, or why there is none (an unusable address, a template that cannot render)."""
        problem = address_problem(recipient.email)
        if problem:
            return f"unusable address: {problem}"
        try:
            return self._compose(batch, recipient, template)
        except (TemplateRenderError, UnknownTemplate) as exc:
            return f"template error: {exc}"

    def _compose(self, batch: BatchDispatched, recipient: Recipient, template: EmailTemplate) -> OutgoingEmail:
        headers = None
        if batch.category == "bulk" and batch.list_id:  # RFC 8058 one-click unsubscribe on every bulk message
            headers = list_unsubscribe_headers(
                self.settings.unsubscribe_key(),
                base_url=self.settings.unsubscribe_url_base(), mailto=self.settings.unsubscribe_mailto,
                company_id=batch.company_id, userid=recipient.userid, list_id=batch.list_id)
        return compose_email(self.settings, self.renderer, job_id=batch.job_id, template_id=template,
                             template_data=batch.template_data, recipient=recipient, headers=headers)

    @staticmethod
    def _failed(batch: BatchDispatched, recipient: Recipient, error: str, *, attempts: int, retryable: bool,
                provider: str | None = None) -> RecipientFailed:
        return RecipientFailed(
            job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no, userid=recipient.userid,
            email=recipient.email, provider=provider, error=error, attempts=attempts, retryable=retryable,
        )
