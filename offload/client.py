"""Producing to the service the way Moodle does: job requests and company settings changes."""

from __future__ import annotations

import json
from typing import Any

from config.settings import Settings
from eventlog.publisher import EventPublisher
from schemas.envelope import Record, encode
from schemas.events import CompanySettingsChanged, Event, JobCancelled, JobRequested, JobResumed, JobRetryRequested

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


async def submit_job(settings: Settings, payload: dict[str, Any]) -> str:
    """Durably hand a job to Kafka (acks=all) and return its id."""
    record = job_record(payload)
    publisher = EventPublisher(settings, source="urn:manireports:offload:cli")
    try:
        await (await publisher.send_record(record))
    finally:
        await publisher.stop()
    return record.key.decode()


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
