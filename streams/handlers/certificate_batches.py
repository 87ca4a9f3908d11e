"""Certificate work of one batch: merge each learner's data, render the PDF in a process pool, store it, record it.

What a certificate job carries (per recipient, falling back to the job's ``template_data``):

- ``course_name``: non-empty text;
- ``completion_date``: an ISO date (``2026-11-20``), an ISO date-time (its date part is used as written) or
  Moodle's ``timecompleted`` unix time as an integer (its UTC date);
- the learner's name is ``firstname`` + ``lastname``; other scalar fields (``custom_text``, ``signer_name``,
  ``signer_title``, ``organisation``) fill the template's ``data_key`` fields.

A missing or invalid one makes that recipient a RecipientFailed (not retryable) naming the field. Rendering is
CPU-bound, so it runs in the worker's render pool (content.certificates.pool), never on the event loop;
uploads run concurrently beside it. A learner whose last store is unavailable (a full disk) waits for it
(``store_outage``). Codes and object keys are deterministic, so a batch served again after a crash, or after a stop
or rebalance gave it up while its learners waited for the store or their mails for the relay, puts the same bytes
under the same key.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, cast

from adapters.storage.base import CertificateStore, StorageUnavailable, StoredObject, object_key
from adapters.storage.stores import CertificateStores
from config.settings import Settings
from content.certificates.codes import certificate_code, verification_url
from content.certificates.pool import CertificateInput, Rendering, RenderPool
from content.certificates.templates import CertificateTemplate, CertificateTemplateStore, TemplateNotFound
from resilience.dependencies import Dependencies
from schemas.events import (
    BatchDispatched,
    CertificateIssued,
    JobFellBackToLocal,
    Recipient,
    RecipientFailed,
    StorageProviderName,
)
from streams.handlers.store_outage import StoreOutage
from streams.handlers.wait_notice import WaitNotice

if TYPE_CHECKING:
    from adapters.email.delivery import BatchDelivery
    from adapters.email.smtp import SmtpProvider
    from streams.batchwork import OutcomeRecorder
    from streams.context import StreamContext
    from streams.handlers.email_batches import (
        CertificateMailer,  # the render processes import this module: keep Faust out of them
    )
    from streams.suppressions import SuppressionList

log = logging.getLogger(__name__)

CHUNK = 16  # learners per trip to a render process: amortises pickling the template, keeps uploads flowing
UPLOADS_IN_FLIGHT = 16
_RESERVED = {"userid", "email", "firstname", "lastname", "course_name", "completion_date"}


class InvalidCertificateData(ValueError):
    """A recipient whose data cannot make a certificate; the message names the field."""


def completion_date_of(value: Any) -> date:
    """``completion_date`` as the job may give it: ISO date, ISO date-time, or unix time (UTC date)."""
    if isinstance(value, bool) or value is None or value == "":
        raise InvalidCertificateData("completion_date is missing")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC).date()
        except (OverflowError, OSError, ValueError):
            raise InvalidCertificateData(f"completion_date {value!r} is not a unix time") from None
    if isinstance(value, str):
        text = value.strip()
        try:
            return date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text).date()
        except ValueError:
            pass
    raise InvalidCertificateData(f"completion_date {value!r} is not an ISO date (YYYY-MM-DD) or unix time")


def certificate_input(settings: Settings, batch: BatchDispatched, recipient: Recipient) -> CertificateInput:
    """The merged inputs of one learner's certificate, or InvalidCertificateData naming what is wrong."""
    extra = dict(recipient.model_extra or {})
    merged = {**batch.template_data, **extra}
    name = recipient.full_name
    if not name:
        raise InvalidCertificateData("learner name is missing: firstname and lastname are both empty")
    course = merged.get("course_name")
    if not isinstance(course, str) or not course.strip():
        raise InvalidCertificateData("course_name is missing: give it per recipient or in template_data")
    when = completion_date_of(merged.get("completion_date"))
    refusal = settings.code_secret_refusal()
    if refusal is not None:
        raise InvalidCertificateData(refusal)
    code = certificate_code(settings.certificate_code_secret.get_secret_value().encode(), batch.job_id,
                            recipient.userid, batch.template_id)
    try:
        key = object_key(batch.company_id, batch.job_id, recipient.userid, code)
    except ValueError as exc:
        raise InvalidCertificateData(f"cannot name a storage object: {exc}") from None
    data = {str(k): str(v) for k, v in merged.items()
            if k not in _RESERVED and isinstance(v, str | int | float) and not isinstance(v, bool)}
    return CertificateInput(recipient.userid, key, code, name, course.strip(), when,
                            verification_url(settings.certificate_verify_base_url, code), data)


@dataclass
class _Storing:
    """Where the rest of a batch goes: the primary store until it fails once past its retries, then local."""

    primary: CertificateStore
    fallback: CertificateStore | None
    reason: str | None = None
    announced: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def fell_back(self) -> bool:
        return self.reason is not None


class _Waits:
    """Why a batch's work waits for what may take hours, while it does: every learner still open waits either for
    the last store it can use (``StoreOutage``, its PDF rendered) or, with its certificate stored, for the
    unreachable relay to take its mail (an outage is waited out for up to OFFLOAD_RELAY_OUTAGE_MAX_SECONDS;
    ``BatchDelivery.waiting``). Nothing of the batch is in flight then (no render, no upload, no message on its
    way), so a stop or rebalance that gives it up sends nobody twice; served again, it stores the same bytes under
    the same keys."""

    def __init__(self, learners: int, relay: SmtpProvider | None, store: StoreOutage) -> None:
        self.open = learners  # learners whose outcome is not recorded yet
        self.relay = relay
        self.store = store
        self.mails: set[BatchDelivery] = set()  # the mails being delivered

    def __call__(self) -> str | None:
        waiting = [waits for mail in self.mails if (waits := mail.waiting(self.relay)) is not None]
        if not self.open or len(waiting) + self.store.waiting != self.open:
            return None
        if self.store.waiting:  # no reason: a put was taken meanwhile, and the waiters' check is due
            return f"certificate store unavailable: {self.store.reason or 'until its next check'}"
        return waiting[0]


@dataclass
class _Issuing:
    """What every certificate of one batch is issued with."""

    batch: BatchDispatched
    template: CertificateTemplate
    by_user: dict[int, Recipient]
    storing: _Storing
    waits: _Waits
    recorder: OutcomeRecorder
    notice: WaitNotice  # says once that the batch waits (BatchWaitingForDependency)


class CertificateBatchHandler:
    def __init__(self, settings: Settings, templates: CertificateTemplateStore, pool: RenderPool,
                 stores: CertificateStores, mailer: CertificateMailer | None = None,
                 suppressions: SuppressionList | None = None, dependencies: Dependencies | None = None) -> None:
        self.settings = settings
        # Where each store's availability is recorded (the worker's health), when given: `storage s3` lost when
        # a put fails past its retries, back at the next put it takes.
        self.dependencies = dependencies
        self.templates = templates
        self.pool = pool
        self.stores = stores
        self.mailer = mailer
        self.suppressions = suppressions
        self._uploads = asyncio.Semaphore(UPLOADS_IN_FLIGHT)

    @classmethod
    def build(cls, ctx: StreamContext, mailer: CertificateMailer | None = None,
              dependencies: Dependencies | None = None) -> CertificateBatchHandler:
        refusal = ctx.settings.code_secret_refusal()
        if refusal is not None:
            log.error("certificates will NOT be issued: %s", refusal)
        elif ctx.settings.uses_public_code_secret:
            log.warning("certificate codes use the public development secret (%s only): do not hand these "
                        "certificates to anyone", ctx.settings.environment)
        from streams.suppressions import SuppressionList  # not at the top: render processes import this module

        pool = RenderPool(ctx.settings.certificate_render_processes)
        stores = CertificateStores(ctx.settings)
        ctx.add_service(pool)
        ctx.add_service(stores)
        return cls(ctx.settings, CertificateTemplateStore(ctx.settings.certificate_template_dir), pool, stores,
                   mailer, SuppressionList(ctx.suppressions), dependencies)

    async def _inputs(self, batch: BatchDispatched, recipients: list[Recipient],
                      recorder: OutcomeRecorder) -> list[CertificateInput]:
        """Each learner's merged inputs; a learner whose data cannot make a certificate is recorded as failed."""
        items: list[CertificateInput] = []
        for recipient in recipients:
            try:
                items.append(certificate_input(self.settings, batch, recipient))
            except InvalidCertificateData as exc:
                await recorder.record(self._failed(batch, recipient, f"invalid certificate data: {exc}",
                                                   retryable=False))
        return items

    async def start(self, batch: BatchDispatched, recipients: list[Recipient], recorder: OutcomeRecorder,
                    gate: asyncio.Event | None = None) -> asyncio.Task[bool]:
        """Hand every chunk of the batch to the render processes, none before ``gate`` is set; the task returned
        stores and records each certificate as its chunk comes back, ends once every learner's outcome is recorded
        (streams.batchwork.BatchHandler), and says whether the batch fell back. A batch started while the
        one before still renders queues behind it, so the render processes do not idle between batches."""
        from streams.batchwork import nothing_out  # not at the top: render processes import this module

        try:
            # The newest version when the batch runs; versions are append-only, so issued ones never change.
            template = self.templates.get(batch.template_id)
        except (TemplateNotFound, ValueError) as exc:
            for recipient in recipients:
                await recorder.record(self._failed(batch, recipient, f"template error: {exc}", retryable=False))
            return nothing_out()
        items = await self._inputs(batch, recipients, recorder)
        if not items:
            return nothing_out()
        primary, fallback = self.stores.for_batch(batch)
        storing = _Storing(primary, fallback)
        outage = StoreOutage(f"job {batch.job_id} batch {batch.batch_no}", (fallback or primary).check,
                             max_seconds=self.settings.storage_outage_max_seconds,
                             base_delay=self.settings.retry_base_delay, max_delay=self.settings.retry_max_delay)
        waits = _Waits(len(items), self.mailer.smtp if self.mailer is not None else None, outage)
        recorder.stalled_by = waits
        if gate is not None:
            await gate.wait()
        chunks = [items[start:start + CHUNK] for start in range(0, len(items), CHUNK)]
        renders = [(chunk, self.pool.submit(template, chunk)) for chunk in chunks]
        issuing = _Issuing(batch, template, {r.userid: r for r in recipients}, storing, waits, recorder,
                           WaitNotice(batch, recorder))
        return asyncio.ensure_future(self._issue(issuing, renders))

    async def _issue(self, issuing: _Issuing, renders: list[tuple[list[CertificateInput], Rendering]]) -> bool:
        """Each chunk's certificates stored and recorded as the chunk comes back from the render processes."""
        try:
            # A TaskGroup: if the render pool breaks, the rest of the batch is cancelled and the whole batch is
            # retried (it resumes from its recorded outcomes), instead of half-finished tasks outliving it.
            async with asyncio.TaskGroup() as group:
                for chunk, rendering in renders:
                    group.create_task(self._render_and_store(issuing, chunk, rendering))
        finally:
            for _, rendering in renders:  # not waited for: a broken pool, a cancel
                rendering.future.cancel()
            issuing.waits.store.close()
        return issuing.storing.fell_back

    async def _render_and_store(self, issuing: _Issuing, chunk: list[CertificateInput], rendering: Rendering) -> None:
        pdfs = await self.pool.result(rendering)
        async with asyncio.TaskGroup() as group:
            for item, pdf in zip(chunk, pdfs, strict=True):
                group.create_task(self._issue_one(issuing, item, pdf))

    async def _issue_one(self, issuing: _Issuing, item: CertificateInput, pdf: bytes | str) -> None:
        try:
            await self._store_one(issuing, item, pdf)
        finally:
            issuing.waits.open -= 1

    async def _store_one(self, issuing: _Issuing, item: CertificateInput, pdf: bytes | str) -> None:
        batch, recorder, storing = issuing.batch, issuing.recorder, issuing.storing
        recipient = issuing.by_user[item.userid]
        if isinstance(pdf, str):
            await recorder.record(self._failed(batch, recipient, pdf, retryable=False))
            return
        outage, attempts = issuing.waits.store, 0
        while True:
            gave_up = await outage.until_up()
            if gave_up is not None:
                await recorder.record(self._failed(batch, recipient, self._unavailable(storing, gave_up),
                                                   retryable=True, attempts=attempts,
                                                   provider=storing.primary.backend))
                return
            async with self._uploads:
                stored, tries, unavailable = await self._store(batch, storing, recorder, item.key, pdf)
            attempts += tries
            if stored is not None:
                outage.took()
                break
            why = str(unavailable)[:1000]
            if outage.lost(why):
                await issuing.notice(f"storage {(storing.fallback or storing.primary).backend}", why)
        emailed, message_id, email_error, suppressed = await self._notify(batch, recipient, stored, item.code,
                                                                          issuing.waits, issuing.notice)
        template = issuing.template
        await recorder.record(CertificateIssued(
            job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no, userid=item.userid,
            email=recipient.email, url=stored.url, object_key=stored.key, sha256=stored.sha256,
            size=stored.size, code=item.code, template_id=template.id, template_version=template.version,
            backend=cast(StorageProviderName, stored.backend), attempts=attempts, emailed=emailed,
            email_message_id=message_id, email_error=email_error, email_suppressed=suppressed,
            holder_name=item.learner_name,
            course_name=item.course_name, completion_date=item.completion_date,
        ))

    async def _notify(self, batch: BatchDispatched, recipient: Recipient, stored: StoredObject, code: str,
                      waits: _Waits, notice: WaitNotice) -> tuple[bool | None, str | None, str | None, bool | None]:
        """(emailed, Message-ID, why not, suppressed) of the mail that tells the learner, when the job asks for one.
        Part of issuing: the outcome says whether the learner was told, so it stays one per learner."""
        if not batch.notify_template_id or self.mailer is None:
            return None, None, None, None
        held = self._held_back(batch, recipient)
        if held is not None:
            return False, None, held, True
        message_id, error = await self.mailer.send(batch, recipient, certificate_url=stored.url, code=code,
                                                   out=waits.mails, notice=notice)
        return message_id is not None, message_id, error, None

    def _held_back(self, batch: BatchDispatched, recipient: Recipient) -> str | None:
        """Why the notification mail must not go to this learner, or None. The mail is transactional (a certificate
        job always is), so only the entries for every message (scope '*') hold it: an admin's "mail nothing", or a
        hard bounce of this very address. Unsubscribes from a list and complaints ('bulk') do not: they are about
        bulk mail (RFC 8058), and the learner earned the certificate. The certificate itself is issued either way."""
        if self.suppressions is None:
            return None
        from streams.suppressions import scopes_for

        found = self.suppressions.find(batch.company_id, recipient, scopes_for(batch.category, batch.list_id))
        if found is None:
            return None
        scope, entry = found
        return f"suppressed ({scope}, {entry.source}): {entry.reason}"[:2000]

    async def _store(self, batch: BatchDispatched, storing: _Storing, recorder: OutcomeRecorder, key: str,
                     pdf: bytes) -> tuple[StoredObject | None, int, StorageUnavailable | None]:
        """(stored object, puts, why the last store was unavailable): the primary store, then local for the rest of
        the batch."""
        attempts = 0
        if not storing.fell_back:
            watch = self.stores.watch_of(storing.primary)
            skipped = watch.skipped() if watch is not None and storing.fallback is not None else None
            if skipped is not None:  # found down by an earlier put, of this batch or another: not tried again here
                await self._fall_back(batch, storing, recorder, skipped)
            else:
                attempts += 1
                try:
                    return self._took(storing.primary, await storing.primary.put(key, pdf)), attempts, None
                except StorageUnavailable as exc:
                    self._lost(storing.primary, exc)
                    if storing.fallback is None:
                        return None, attempts, exc
                    await self._fall_back(batch, storing, recorder, str(exc))
        assert storing.fallback is not None
        attempts += 1
        try:
            return self._took(storing.fallback, await storing.fallback.put(key, pdf)), attempts, None
        except StorageUnavailable as exc:
            self._lost(storing.fallback, exc)
            return None, attempts, exc

    @staticmethod
    def _unavailable(storing: _Storing, why: str) -> str:
        """The error of a learner whose certificate no store would take, however long it was waited for."""
        stores = "cloud and local certificate stores" if storing.fell_back else "certificate store"
        return f"{stores} unavailable: {why}"[:2000]

    def _took(self, store: CertificateStore, stored: StoredObject) -> StoredObject:
        """Records that ``store`` took a put: in the worker's health and, for a cloud store, its watch."""
        if self.dependencies is not None:
            self.dependencies.restored(f"storage {store.backend}")
        if (watch := self.stores.watch_of(store)) is not None:
            watch.took()
        return stored

    def _lost(self, store: CertificateStore, exc: StorageUnavailable) -> None:
        """Records that a put to ``store`` failed: in the worker's health and, for a cloud store, its watch (the
        batches after it skip the store)."""
        if (watch := self.stores.watch_of(store)) is not None:
            watch.failed(str(exc)[:1000])
        if self.dependencies is not None:
            # Asked again while lost, so an idle worker does not say so until its next certificate.
            self.dependencies.lost(f"storage {store.backend}", str(exc)[:500], recheck=store.check)

    @staticmethod
    async def _fall_back(batch: BatchDispatched, storing: _Storing, recorder: OutcomeRecorder, error: str) -> None:
        async with storing.lock:
            if storing.announced:
                return
            storing.reason = f"{storing.primary.backend} unavailable: {error}"[:1000]
            storing.announced = True
            assert storing.fallback is not None
            log.warning("job %s batch %d: %s; storing the rest of the batch locally", batch.job_id,
                        batch.batch_no, storing.reason)
            await recorder.record_event(JobFellBackToLocal(
                job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no,
                from_provider=storing.primary.backend, to_provider=storing.fallback.backend, reason=storing.reason,
            ))

    @staticmethod
    def _failed(batch: BatchDispatched, recipient: Recipient, error: str, *, retryable: bool, attempts: int = 0,
                provider: str | None = None) -> RecipientFailed:
        return RecipientFailed(
            job_id=batch.job_id, run=batch.run, batch_no=batch.batch_no, userid=recipient.userid,
            email=recipient.email, provider=provider, error=error, attempts=attempts, retryable=retryable,
        )
