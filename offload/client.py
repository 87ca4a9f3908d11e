"""Producing to the service the way Moodle does: job requests and company settings changes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from config.settings import Settings
from eventlog.publisher import EventPublisher
from schemas.chunking import chunk_digest, job_digest
from schemas.envelope import Record, encode
from schemas.events import (
    CompanySettingsChanged,
    Event,
    JobCancelled,
    JobCommitted,
    JobOpened,
    JobRequested,
    JobResumed,
    JobRetryRequested,
    RecipientChunkReceived,
)

# Above this many learners `offload submit` sends a job in parts (and always above max_recipients_per_job).
CHUNK_SIZE = 50_000

# The original design carried this inside the job; secrets never enter the log.
_SECRET_FIELDS = ("callback_secret",)


def job_record(payload: dict[str, Any]) -> Record:
    """The job as Moodle sent it (minus secrets), validated later by the worker so every problem is reported."""
    clean = {k: v for k, v in payload.items() if k not in _SECRET_FIELDS}
    job_id = clean.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise ValueError("a job needs a job_id string")
    headers = encode(JobRequested.model_construct(job_id=job_id)).headers
    return Record("job-requests", job_id.encode(), json.dumps(clean, separators=(",", ":")).encode(), headers)


async def submit_job(settings: Settings, payload: dict[str, Any], *, chunk_size: int = CHUNK_SIZE) -> str:
    """Durably hand a job to Kafka (acks=all) and return its id; in parts when it has many learners."""
    recipients = payload.get("recipients")
    size = min(chunk_size, settings.max_recipients_per_job)
    if isinstance(recipients, list) and len(recipients) > size:
        return await submit_job_in_chunks(settings, payload, chunk_size=size)
    record = job_record(payload)
    publisher = EventPublisher(settings, source="urn:manireports:offload:cli")
    try:
        await (await publisher.send_record(record))
    finally:
        await publisher.stop()
    return record.key.decode()


async def submit_job_in_chunks(settings: Settings, payload: dict[str, Any], *, chunk_size: int) -> str:
    """Hand a job over as JobOpened, RecipientChunkReceived × n (learners sorted by userid, as the worker
    requires) and JobCommitted; the worker serves it once committed and counts repeated learners exactly."""
    clean = {k: v for k, v in payload.items() if k not in _SECRET_FIELDS and k not in ("recipients", "chunked")}
    header = JobOpened.model_validate(clean)
    learners = sorted(JobRequested.model_validate({**clean, "recipients": payload["recipients"]}).recipients,
                      key=lambda r: r.userid)  # stable: the first listing of a learner stays first
    publisher = EventPublisher(settings, source="urn:manireports:offload:cli")
    digests: list[str] = []
    sending = []
    try:
        await publisher.send_and_wait(header)
        for number, start in enumerate(range(0, len(learners), chunk_size)):
            part = learners[start:start + chunk_size]
            digests.append(chunk_digest(r.userid for r in part))
            sending.append(await publisher.send(RecipientChunkReceived(
                job_id=header.job_id, chunk_no=number, recipients=part, digest=digests[-1])))
        await publisher.flush()
        await asyncio.gather(*sending)  # every chunk acknowledged before the commit is written
        await publisher.send_and_wait(JobCommitted(job_id=header.job_id, chunk_count=len(digests),
                                                   total_recipients=len(learners), digest=job_digest(digests)))
    finally:
        await publisher.stop()
    return header.job_id


async def _send(settings: Settings, event: Event) -> None:
    publisher = EventPublisher(settings, source="urn:manireports:offload:cli")
    try:
        await publisher.send_and_wait(event)
    finally:
        await publisher.stop()


async def request_retry(settings: Settings, job_id: str, *, only_retryable: bool = True,
                        requested_by: str = "cli") -> JobRetryRequested:
    """Serve a job's failed learners again (a new run) once its current run has completed."""
    event = JobRetryRequested(job_id=job_id, only_retryable=only_retryable, requested_by=requested_by)
    await _send(settings, event)
    return event


async def cancel_job(settings: Settings, job_id: str, *, requested_by: str = "cli",
                     reason: str | None = None) -> JobCancelled:
    """Batches of the job that have not started fail as cancelled; what was sent stays sent."""
    event = JobCancelled(job_id=job_id, requested_by=requested_by, reason=reason)
    await _send(settings, event)
    return event


async def resume_job(settings: Settings, job_id: str, *, requested_by: str = "cli",
                     reason: str | None = None) -> JobResumed:
    """A paused job's waiting batches are sent; nobody already served is sent again (the worker ignores a job
    that is not paused)."""
    event = JobResumed(job_id=job_id, requested_by=requested_by, reason=reason)
    await _send(settings, event)
    return event


async def change_company_settings(settings: Settings, company_id: int, **fields: Any) -> CompanySettingsChanged:
    event = CompanySettingsChanged(company_id=company_id, **fields)
    await _send(settings, event)
    return event
