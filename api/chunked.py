"""Jobs sent in parts: open (``POST /api/v1/jobs`` with ``"chunked": true``), send numbered chunks of learners
(``POST /api/v1/jobs/{id}/recipients``), commit (``POST /api/v1/jobs/{id}/commit``).

Each request is signed like any other and hands one record to Kafka (JobOpened, RecipientChunkReceived,
JobCommitted, keyed by job id). Every step may be retried: a header or chunk sent again with the same content
changes nothing; a chunk number sent again with other learners is refused (409). The worker serves a job only
once committed and checks the commit against the chunks itself (streams.chunked_jobs). This process also
remembers each chunk it handed over (a summary, never the learners), so it can refuse an unsorted chunk at once
and wait briefly for the worker's verdict on the commit (the read model) to answer with it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiohttp import web
from pydantic import ValidationError

from api import params
from api.admission import admit, check_job_templates
from api.errors import ApiError, json_response
from api.ingest import control_characters, template_syntax
from api.state import ApiState, body_of, caller_of, state_of
from schemas.chunking import ChunkSummary, summarize, unsorted_at
from schemas.events import (
    CHUNK_ORDER,
    NOT_COMMITTED,
    JobCommitted,
    JobOpened,
    JobRequested,
    RecipientChunkReceived,
    client_job_id,
)
from security.signing import Caller

routes = web.RouteTableDef()


@dataclass
class Upload:
    """A chunked job as this API process knows it."""

    header: JobOpened
    chunks: dict[int, ChunkSummary] = field(default_factory=dict)
    committed: dict[str, object] | None = None  # the commit's answer, repeated to a retried commit


class Uploads:
    """Open and recently committed chunked jobs of this process, by stored job id (oldest forgotten first)."""

    def __init__(self, remember: int = 10_000) -> None:
        self._remember = remember
        self._uploads: OrderedDict[str, Upload] = OrderedDict()

    def get(self, job_id: str) -> Upload | None:
        return self._uploads.get(job_id)

    def add(self, job_id: str, upload: Upload) -> None:
        self._uploads[job_id] = upload
        while len(self._uploads) > self._remember:
            self._uploads.popitem(last=False)


UPLOADS = web.AppKey("uploads", Uploads)


def setup(app: web.Application) -> None:
    app[UPLOADS] = Uploads()
    app.add_routes(routes)


def is_chunked_header(body: bytes) -> bool:
    """A job body that declares itself chunked. A header is small (no learners; template_data and content are
    capped), so a body over 1 MiB is a job sent whole and is not parsed twice."""
    if len(body) > 1024 * 1024 or b'"chunked"' not in body:
        return False
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(raw, dict) and raw.get("chunked") is True


def _problems(exc: ValidationError) -> list[dict[str, str]]:
    return [{"code": "missing_field" if e["msg"] == "Field required" else "invalid_field",
             "field": ".".join(str(p) for p in e["loc"]) or "(root)", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)[:50]]


async def open_chunked_job(request: web.Request) -> web.Response:
    """202 once the JobOpened is durable in Kafka; 200 when this job id is already open or known."""
    state, caller = state_of(request), caller_of(request)
    raw = params.json_object(body_of(request), required=True)
    raw.pop("chunked")
    if raw.get("recipients"):
        raise ApiError(422, "invalid_field", "a chunked job's header carries no recipients: send them in chunks "
                                             "to /api/v1/jobs/{id}/recipients")
    try:
        header = JobOpened.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(exc)
        raise ApiError(422, problems[0]["code"], f"the job header has {len(problems)} problem(s); nothing was "
                       "accepted", problems=problems) from None
    if refusals := list(template_syntax(header.template_data)) + list(control_characters(header)):
        raise ApiError(422, refusals[0].code, refusals[0].message, problems=[r.as_json() for r in refusals])
    header = await admit(state, caller, header, check_templates=False)
    uploads = request.app[UPLOADS]
    known = uploads.get(header.job_id)
    links = {"self": f"/api/v1/jobs/{header.job_id}", "recipients": f"/api/v1/jobs/{header.job_id}/recipients",
             "commit": f"/api/v1/jobs/{header.job_id}/commit"}
    if known is not None:
        _check_owner(caller, known.header.company_id)
        return json_response({"job_id": header.job_id, "status": "committed" if known.committed else "open",
                              "created": False, "links": links})
    row = await state.store.job(header.job_id)
    handed = state.submissions.handed_over(header.job_id)
    if row is not None or handed is not None:
        company = row["company_id"] if row is not None else handed
        if not caller.may_see(company):
            raise ApiError(409, "job_id_taken", "this job id is already in use; choose another")
        return json_response({"job_id": header.job_id, "status": row["status"] if row else "submitted",
                              "created": False, "links": links})
    await state.publisher.send_and_wait(header)
    # Opened again after this process restarted (or on another replica): the worker keeps the first header and
    # the chunks already in the log; this process only knows the chunks sent through it from now on.
    uploads.add(header.job_id, Upload(header))
    return json_response({"job_id": header.job_id, "status": "open", "created": True, "links": links}, status=202)


def _check_owner(caller: Caller, company_id: int) -> None:
    if not caller.may_see(company_id):
        raise ApiError(404, "job_not_found", "no such job")


def expired(row: dict[str, Any] | None) -> bool:
    """Whether the read model says the job was closed for staying open too long (streams.chunked_expiry)."""
    return row is not None and row["status"] == "rejected" and any(
        p.get("code") == NOT_COMMITTED for p in row["problems"] or [])


async def _open_upload(state: ApiState, request: web.Request) -> tuple[str, Upload]:
    job_id = params.job_id(request)
    caller = caller_of(request)
    upload = request.app[UPLOADS].get(job_id)
    row = None
    if upload is None or upload.committed is None:  # an open job may have been closed meanwhile
        try:
            row = await state.store.job(job_id)
        except psycopg.Error:
            if upload is None:
                raise  # 503: nothing else can say whether the job exists
            # The read model is down: the open job's chunk or commit goes on (the worker ignores either if the
            # job was closed meanwhile, and the commit's answer then comes from the read model once it is back).
        if expired(row) and row is not None and caller.may_see(row["company_id"]):
            raise ApiError(410, "chunked_job_expired", "the job stayed open longer than "
                           f"{state.settings.chunked_job_max_open_hours:g} h without a commit and was closed "
                           f"(chunked_job_not_committed); nothing will be sent: send it again under a new id",
                           problems=row["problems"])
    if upload is None:
        if row is not None and caller.may_see(row["company_id"]):
            raise ApiError(409, "job_not_open", f"the job is {row['status']}: chunks and commits are over")
        raise ApiError(404, "job_not_open", "no open chunked job with this id here: open it (again) with POST "
                                            "/api/v1/jobs and \"chunked\": true, then send the chunks")
    _check_owner(caller, upload.header.company_id)
    return job_id, upload


@routes.post("/api/v1/jobs/{job_id}/recipients")
async def add_chunk(request: web.Request) -> web.Response:
    """202 once the chunk is durable in Kafka; 200 for the same chunk sent again."""
    state = state_of(request)
    job_id, upload = await _open_upload(state, request)
    if upload.committed is not None:
        raise ApiError(409, "job_committed", "the job is committed: no more chunks")
    body = body_of(request)
    raw = params.json_object(body, required=True)
    try:
        chunk = RecipientChunkReceived.model_validate({**raw, "job_id": job_id, "digest": None})
    except ValidationError as exc:
        problems = _problems(exc)
        raise ApiError(422, problems[0]["code"], f"the chunk has {len(problems)} problem(s); nothing was accepted",
                       problems=problems) from None
    limit = state.settings.max_recipients_per_job
    if len(chunk.recipients) > limit:
        raise ApiError(422, "too_many_recipients", f"a chunk holds at most {limit} recipients "
                                                   f"(max_recipients_per_job); this one has {len(chunk.recipients)}")
    summary = summarize(chunk.recipients)
    number = chunk.chunk_no
    if not summary.sorted:
        at = unsorted_at(chunk.recipients)
        assert at is not None  # the summary found the chunk unsorted
        raise ApiError(422, "unsorted_chunk", f"recipients.{at} has userid {chunk.recipients[at].userid} below the "
                                              f"one before it: send {CHUNK_ORDER}")
    # A learner listed twice is not refused here (unlike a job sent whole): a chunked job is often streamed
    # from a query the client cannot check as a whole, so the worker removes every repeat and counts it.
    before, after = upload.chunks.get(number - 1), upload.chunks.get(number + 1)
    if (before is not None and summary.first < before.last) or (after is not None and summary.last > after.first):
        raise ApiError(422, "unsorted_chunk", f"chunk {number} overlaps the userids of chunk "
                                              f"{number - 1 if before and summary.first < before.last else number + 1}:"
                                              f" send {CHUNK_ORDER}")
    if refusals := list(control_characters(JobRequested.model_construct(recipients=chunk.recipients,
                                                                         template_data={}))):
        raise ApiError(422, refusals[0].code, refusals[0].message, problems=[r.as_json() for r in refusals])
    if number == 0:
        await check_job_templates(state, upload.header.model_copy(update={"recipients": chunk.recipients}))
    answer = {"job_id": client_job_id(job_id, upload.header.company_id), "chunk_no": number,
              "recipients": summary.count, "digest": summary.digest}
    seen = upload.chunks.get(number)
    if seen is not None:
        if seen != summary:
            raise ApiError(409, "chunk_conflict", f"chunk {number} was sent before with other learners; a chunk "
                                                  "sent again must be the same")
        return json_response({**answer, "created": False})
    await state.publisher.send_and_wait(chunk.model_copy(update={"digest": summary.digest}))
    upload.chunks[number] = summary
    return json_response({**answer, "created": True}, status=202)


@routes.post("/api/v1/jobs/{job_id}/commit")
async def commit_job(request: web.Request) -> web.Response:
    """The worker's verdict on the commit, waited for up to api_handoff_timeout: 202 accepted (or still being
    checked), 422 refused (a chunk missing, a count or digest that differs: its JobRejected says the same);
    the same answer again for a repeated commit."""
    state = state_of(request)
    job_id, upload = await _open_upload(state, request)
    if upload.committed is not None:
        return json_response({**upload.committed, "created": False})
    raw = params.json_object(body_of(request), required=True)
    try:
        commit = JobCommitted.model_validate({**raw, "job_id": job_id})
    except ValidationError as exc:
        problems = _problems(exc)
        raise ApiError(422, problems[0]["code"], f"the commit has {len(problems)} problem(s); the job stays open",
                       problems=problems) from None
    await state.publisher.send_and_wait(commit)
    state.submissions.remember(job_id, upload.header.company_id)  # GET /jobs/{id} says "submitted" until routed
    shown = client_job_id(job_id, upload.header.company_id)
    answer: dict[str, object] = {"job_id": shown, "status": "submitted", "chunks": commit.chunk_count,
                                 "links": {"self": f"/api/v1/jobs/{shown}"}}
    row = await _verdict(state, job_id)
    if row is not None and row["status"] == "rejected":
        problems = row["problems"] or []
        upload.committed = {**answer, "status": "rejected", "problems": problems}
        raise ApiError(422, (problems[0].get("code") if problems else None) or "invalid_job",
                       f"the job was refused at its commit; nothing will be sent: {row['error_message']}",
                       problems=problems)
    if row is not None:
        answer.update(status=row["status"], recipients=row["total_recipients"],
                      duplicates_removed=row["duplicates_removed"])
    upload.committed = answer
    return json_response({**answer, "created": True}, status=202)


async def _verdict(state: ApiState, job_id: str) -> dict[str, Any] | None:
    """The job's read-model row once the worker has routed or refused it; None when that takes longer."""
    deadline = time.monotonic() + state.settings.api_handoff_timeout
    pause = 0.05
    while True:
        try:
            row = await state.store.job(job_id)
        except psycopg.Error:  # the read model is down: the job is committed all the same
            return None
        if row is not None or time.monotonic() + pause > deadline:
            return row
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 0.5)
