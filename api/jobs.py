"""Job endpoints: signed ingest, list, progress, per-recipient status, cancel and retry requests."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from api import params
from api.admission import admit
from api.chunked import is_chunked_header, open_chunked_job
from api.errors import ApiError, json_response
from api.ingest import NotAJob, check_job
from api.pauses import pause_of
from api.state import ApiState, body_of, caller_of, state_of
from api.store import JOB_STATUSES, RECIPIENT_STATUSES, progress
from projections.jobs import FINISHED, JobStatus
from resilience.collector import gc_paused
from schemas.events import (
    JobCancelled,
    JobResumed,
    JobRetryRequested,
    client_job_id,
    scoped_job_id,
)
from security.signing import Caller

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


@routes.post("/api/v1/jobs")
async def submit_job(request: web.Request) -> web.Response:
    """202 once the JobRequested is durable in Kafka; 200 with the existing job for a job id seen before.
    A body with ``"chunked": true`` and no recipients opens a job sent in parts (api.chunked)."""
    state, caller = state_of(request), caller_of(request)
    if is_chunked_header(body_of(request)):
        return await open_chunked_job(request)
    started = time.perf_counter()
    try:
        with gc_paused():
            result = check_job(body_of(request), max_recipients=state.settings.max_recipients_per_job)
    except NotAJob as exc:
        status = 400 if exc.code == "malformed_json" else 422
        raise ApiError(status, exc.code, exc.message) from None
    if result.job is None:
        raise ApiError(422, result.code, f"the job has {len(result.problems)} problem(s); nothing was accepted",
                       problems=[p.as_json() for p in result.problems])
    job = await admit(state, caller, result.job)
    checked = time.perf_counter()
    may_see = None if caller.company_id is None else {caller.company_id}
    submission = await state.submissions.submit(job, may_see=may_see)
    log.info("job %s of company %s from key %s: %s, %d recipients (checked in %.0f ms, handed over in %.0f ms)",
             job.job_id, job.company_id, caller.key_id, "handed over" if submission.created else "already known",
             len(job.recipients), (checked - started) * 1000, (time.perf_counter() - checked) * 1000)
    shown = client_job_id(submission.job_id, job.company_id)  # the id Moodle chose, even when stored scoped
    return json_response(
        {"job_id": shown, "status": submission.status, "created": submission.created,
         "recipients": len(job.recipients), "links": {"self": f"/api/v1/jobs/{shown}"}},
        status=202 if submission.created else 200,
    )


@routes.get("/api/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    state, caller = state_of(request), caller_of(request)
    limit, offset = params.page(request)
    status = params.choice(request, "status", JOB_STATUSES)
    company = caller.company_id
    if "company_id" in request.query:
        wanted = params.integer(request, "company_id", 0, low=0, high=10**9)
        if not caller.may_see(wanted):
            raise ApiError(404, "company_not_found", "no such company")
        company = wanted
    rows, total = await state.store.jobs(company_id=company, status=status, limit=limit, offset=offset)
    shown = [progress(row, []) for row in rows]
    if caller.company_id is not None:  # a company sees the ids it chose; an admin sees the stored ones
        for job in shown:
            job["job_id"] = client_job_id(job["job_id"], job["company_id"])
    return json_response({
        "jobs": shown,
        "total": total, "limit": limit, "offset": offset,
        "next_offset": offset + len(rows) if offset + len(rows) < total else None,
    })


async def _visible_job(state: ApiState, caller: Caller, job_id: str) -> dict[str, Any]:
    """The job's read-model row, or a stand-in for a job handed over but not yet routed; 404 for a job the
    caller may not see, exactly as for one that does not exist. ``_id`` is the id the job is stored under
    (``job_id..c<company>`` when another company had already used the id); ``job_id`` is the one the caller
    uses."""
    candidates = [job_id]
    if caller.company_id is not None:
        candidates.append(scoped_job_id(job_id, caller.company_id))
    rows = []
    for stored in candidates:
        row, errors = await state.store.job_with_errors(stored)
        if row is not None and caller.may_see(row["company_id"]):
            return {**progress(row, errors), "job_id": job_id, "_id": stored, "_row": row}
        rows.append(row)
    for stored, row in zip(candidates, rows, strict=True):
        company = state.submissions.handed_over(stored)
        if company is not None and caller.may_see(company):
            # Handed over, not routed yet. If another company's job holds the id after all (its request reached
            # Kafka first, through another API process), the worker routes this one under the scoped id.
            routed_as = stored if row is None or row["company_id"] == company else scoped_job_id(stored, company)
            return {"job_id": job_id, "company_id": company, "status": "submitted", "progress": None,
                    "errors": [], "_id": routed_as, "_row": None}
    raise ApiError(404, "job_not_found", "no such job")


@routes.get("/api/v1/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    state = state_of(request)
    job = await _visible_job(state, caller_of(request), params.job_id(request))
    job.pop("_row")
    job["pause"] = await pause_of(state.store, job.pop("_id"))
    if job["pause"] and job["pause"]["paused"] and job["status"] not in FINISHED:
        job["status"] = "paused"
    return json_response(job)


@routes.get("/api/v1/jobs/{job_id}/recipients")
async def job_recipients(request: web.Request) -> web.Response:
    state = state_of(request)
    job_id = params.job_id(request)
    stored = (await _visible_job(state, caller_of(request), job_id))["_id"]
    limit, offset = params.page(request)
    status = params.choice(request, "status", RECIPIENT_STATUSES)
    rows = await state.store.recipients(stored, status=status, limit=limit, offset=offset)
    return json_response({"job_id": job_id, "status": status, "recipients": rows, "limit": limit,
                          "offset": offset, "next_offset": offset + len(rows) if len(rows) == limit else None})


def _reason_of(request: web.Request) -> str | None:
    """The optional ``reason`` of a cancel or resume request's JSON body."""
    reason = params.json_object(body_of(request), required=False).get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
        raise ApiError(422, "invalid_field", "reason must be a string of at most 500 characters")
    return reason


@routes.post("/api/v1/jobs/{job_id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    state, caller = state_of(request), caller_of(request)
    job = await _visible_job(state, caller, params.job_id(request))
    if job["status"] in FINISHED:
        raise ApiError(409, "job_finished", f"the job is already {job['status']}")
    reason = _reason_of(request)
    event = JobCancelled(job_id=job["_id"], company_id=job["company_id"], requested_by=caller.key_id,
                         reason=reason)
    await state.publisher.send_and_wait(event)
    return json_response({"job_id": job["job_id"], "status": "cancel_requested",
                          "requested_at": event.cancelled_at}, status=202)


@routes.post("/api/v1/jobs/{job_id}/resume")
async def resume_job(request: web.Request) -> web.Response:
    state, caller = state_of(request), caller_of(request)
    job = await _visible_job(state, caller, params.job_id(request))
    pause = await pause_of(state.store, job["_id"])
    if job["status"] in FINISHED or not (pause and pause["paused"]):
        raise ApiError(409, "job_not_paused", f"only a paused job can be resumed; this one is {job['status']}")
    reason = _reason_of(request)
    event = JobResumed(job_id=job["_id"], company_id=job["company_id"], requested_by=caller.key_id, reason=reason)
    await state.publisher.send_and_wait(event)
    return json_response({"job_id": job["job_id"], "status": "resume_requested",
                          "requested_at": event.resumed_at}, status=202)


@routes.post("/api/v1/jobs/{job_id}/retry")
async def retry_job(request: web.Request) -> web.Response:
    state, caller = state_of(request), caller_of(request)
    job = await _visible_job(state, caller, params.job_id(request))
    if job["status"] != JobStatus.COMPLETED:
        raise ApiError(409, "job_not_finished", f"only a completed job can be retried; this one is {job['status']}")
    if not job["progress"]["failed"]:
        raise ApiError(409, "nothing_to_retry", "the job has no failed recipients")
    body = params.json_object(body_of(request), required=False)
    only_retryable = body.get("only_retryable", True)
    if not isinstance(only_retryable, bool):
        raise ApiError(422, "invalid_field", "only_retryable must be true or false")
    await _limit_retries(state, job["_id"])
    event = JobRetryRequested(job_id=job["_id"], company_id=job["company_id"], requested_by=caller.key_id,
                              only_retryable=only_retryable)
    await state.publisher.send_and_wait(event)
    return json_response({"job_id": job["job_id"], "status": "retry_requested", "only_retryable": only_retryable,
                          "requested_at": event.requested_at}, status=202)


async def _limit_retries(state: ApiState, job_id: str) -> None:
    """One retry request per job per api_retry_interval, and at most api_retries_per_job_per_day in any 24
    hours, counted in the store every API replica shares: each retry run writes the job's failed learners to
    Kafka again, so a loop of retries must not be free (issue 11 finding 1)."""
    interval = state.settings.api_retry_interval
    seen = state.verifier.seen
    now = time.time()
    if interval > 0 and not await seen.first_time("retry", job_id, expires_at=now + interval, now=now):
        raise ApiError(429, "retry_rate_limited", f"this job was retried less than {interval:.0f} s ago; "
                                                  "wait for that run to finish", retry_after=int(interval))
    per_day = state.settings.api_retries_per_job_per_day
    if per_day <= 0:
        return
    # per_day slots, each held for 24 hours by the request that took it: no more than per_day in any 24 hours.
    for slot in range(per_day):
        if await seen.first_time("retry-day", f"{job_id}:{slot}", expires_at=now + DAY, now=now):
            return
    raise ApiError(429, "retry_limit_reached", f"this job was retried {per_day} times in the last 24 hours, "
                                               "the most allowed (api_retries_per_job_per_day)",
                   retry_after=3600)


DAY = 24 * 3600.0
