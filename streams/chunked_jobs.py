"""Jobs sent in parts: the route agent notes each part as it arrives and serves the job only once committed.

All three kinds of record (JobOpened, RecipientChunkReceived, JobCommitted) are keyed by job id, so they reach
the one route agent that owns the job's job-requests partition, in the order they were written. The agent keeps
per job one note (where the header lies, the highest chunk number seen) and per chunk one note (where it lies in
the log, its ChunkSummary): a few hundred bytes per chunk, never a learner. At the commit it checks the chunks
against what the commit says (schemas.chunking: none missing, none extra, none sent twice differently, sorted,
count and digest), rejects the job with a JobRejected naming every problem, or routes it like any job while
reading the learners back chunk by chunk (streams.chunk_reader).

Crash safety is the route agent's: a commit processed again after a crash (its offset not yet committed) cuts
the same batches under the same keys, and the batch agent serves each batch once; a chunk processed again
finds its own note (same place in the log) and changes nothing. The notes are dropped once the job is
accepted, after ``known-jobs`` says so, so a repeat of any of its records is ignored from then on.

A job never committed is closed by a ChunkedJobExpired record (streams.chunked_expiry writes it once the job has
been open longer than ``chunked_job_max_open_hours``): read here in order with the job's records, it rejects the
job (JobRejected, ``chunked_job_not_committed``) unless a commit came first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import faust
from faust.types import TableT

from content.validation import job_template_problems
from schemas.chunking import ChunkSummary, check_commit, summarize
from schemas.envelope import UndecodableRecord, decode
from schemas.events import (
    NOT_COMMITTED,
    ChunkedJobExpired,
    JobCommitted,
    JobOpened,
    JobRejected,
    JobRequested,
    Problem,
    RecipientChunkReceived,
)
from schemas.intake import template_data_problem
from streams.budget_wait import BudgetWait
from streams.chunk_reader import ChunkReader, LoggedLearners
from streams.context import StreamContext
from streams.learners import Learners
from streams.ledger import RecordGone
from streams.state import KnownJob, Stored, _check_keys
from streams.templates import ResolvedTemplate

log = logging.getLogger(__name__)

CE_TYPES = frozenset({JobOpened.ce_type, RecipientChunkReceived.ce_type, JobCommitted.ce_type,
                      ChunkedJobExpired.ce_type})

# Routes a committed job: (its header, repeats removed, where its header lies, its email template, the budget
# wait it comes from or None, its learners) -> True once dispatched, False when it waits for its budget.
Accept = Callable[[JobRequested, int, tuple[int, int], ResolvedTemplate | None, BudgetWait | None, Learners],
                  Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class OpenedJob:
    """Table ``job-chunks``, key job id: where the job's JobOpened lies, the highest chunk number seen, for
    a committed job that waits for its budget: (chunk count, learners, repeats) as its commit check found, and
    when the job's first record reached the log (unix seconds; the open-job limit counts from it)."""

    partition: int | None  # None: chunks arrived but no header (yet)
    offset: int | None
    highest_chunk: int = -1
    committed: tuple[int, int, int] | None = None
    opened_at: float | None = None  # None only in notes written before open jobs expired

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Stored) -> OpenedJob:
        _check_keys("job-chunks job", raw, ("partition", "offset", "highest_chunk", "committed", "opened_at"))
        committed = raw["committed"]
        return cls(raw["partition"], raw["offset"], int(raw["highest_chunk"]),
                   None if committed is None else (int(committed[0]), int(committed[1]), int(committed[2])),
                   raw.get("opened_at"))  # absent in notes written before open jobs expired


@dataclass(frozen=True, slots=True)
class ChunkNote:
    """Table ``job-chunks``, key ``job:chunk_no``: where the chunk lies and what the commit check needs of it."""

    partition: int
    offset: int
    summary: ChunkSummary
    conflict: bool = False  # the same chunk number came again with other learners

    def to_dict(self) -> dict[str, Any]:
        return {"partition": self.partition, "offset": self.offset, "conflict": self.conflict,
                **asdict(self.summary)}

    @classmethod
    def from_dict(cls, raw: Stored) -> ChunkNote:
        summary_keys = ChunkSummary.__dataclass_fields__.keys()
        _check_keys("job-chunks chunk", raw, ("partition", "offset", "conflict", *summary_keys))
        return cls(int(raw["partition"]), int(raw["offset"]), ChunkSummary(**{k: raw[k] for k in summary_keys}),
                   bool(raw["conflict"]))


def chunk_key(job_id: str, chunk_no: int) -> str:
    return f"{job_id}:{chunk_no}"  # ":" never occurs in a job id


class ChunkedJobs:
    def __init__(self, ctx: StreamContext, table: TableT[str, dict[str, Any]], reader: ChunkReader,
                 accept: Accept) -> None:
        self.ctx = ctx
        self.table = table
        self.reader = reader
        self.accept = accept

    async def handle(self, message: faust.types.Message) -> None:
        try:
            event = decode(message.value, message.headers)
        except UndecodableRecord as exc:
            await self.ctx.dead_letter(message, str(exc), "route-jobs")
            return
        assert isinstance(event, JobOpened | RecipientChunkReceived | JobCommitted | ChunkedJobExpired)
        stored = self.ctx.known_jobs.get(event.job_id)
        if stored is not None:
            # A resubmission, or (only for records produced past the API, which refuses an id another company
            # holds with 409 job_id_taken) another company's job under a taken id: ignored either way.
            log.info("job %s already %s; its %s is ignored", event.job_id, KnownJob.from_stored(stored).outcome,
                     type(event).__name__)
            return
        where = (message.partition, message.offset)
        if isinstance(event, JobOpened):
            self._opened(event, where, message.timestamp)
        elif isinstance(event, RecipientChunkReceived):
            self._chunk(event, where, message.timestamp)
        elif isinstance(event, ChunkedJobExpired):
            await self._expire(event)
        else:
            await self._commit(event)

    def _opened(self, event: JobOpened, where: tuple[int, int], at: float) -> None:
        opened = self._job(event.job_id)
        if opened is not None and opened.partition is not None:
            if (opened.partition, opened.offset) != where:
                log.info("job %s opened again; the first header stands", event.job_id)
            return
        if opened is None:
            opened = OpenedJob(None, None, opened_at=at)
        self.table[event.job_id] = OpenedJob(*where, highest_chunk=opened.highest_chunk,
                                             opened_at=opened.opened_at).to_dict()

    async def _expire(self, event: ChunkedJobExpired) -> None:
        opened = self._job(event.job_id)
        if opened is None or opened.committed is not None:
            log.info("job %s: its expiry is ignored, the job is no longer open", event.job_id)
            return
        hours = f"{event.max_open_hours:g}"
        header: JobOpened | None = None
        if opened.partition is not None and opened.offset is not None:  # its callback URL: nobody else is told
            try:
                found = await self.ctx.ledger.fetch("job-requests", opened.partition, opened.offset)
            except RecordGone:  # open longer than job-requests keeps records: rejected all the same, untold
                found = None
            if found is not None:
                assert isinstance(found, JobOpened) and found.job_id == event.job_id
                header = found
        await self._reject(event.job_id, event.company_id, [Problem(
            field="job_id", code=NOT_COMMITTED,
            message=f"the chunked job was opened at {event.opened_at.isoformat(timespec='seconds')} and not "
                    f"committed within {hours} h (OFFLOAD_CHUNKED_JOB_MAX_OPEN_HOURS; {event.chunks_received} "
                    "chunk(s) received); nothing was sent: send the job again under a new id")],
            opened, 0, callback_from=header)

    def open_jobs(self) -> list[tuple[str, OpenedJob]]:
        """Every job in this worker's copy of the table that is still open (not committed)."""
        found = []
        for key, raw in list(self.table.items()):
            if raw is None or ":" in str(key):
                continue  # a chunk's note, or a deleted key
            opened = OpenedJob.from_dict(raw)
            if opened.committed is None:
                found.append((str(key), opened))
        return found

    def _chunk(self, event: RecipientChunkReceived, where: tuple[int, int], at: float) -> None:
        key = chunk_key(event.job_id, event.chunk_no)
        summary = summarize(event.recipients)
        stored = self.table.get(key)
        if stored is not None:
            note = ChunkNote.from_dict(stored)
            if (note.partition, note.offset) != where and note.summary != summary and not note.conflict:
                log.warning("job %s: chunk %d arrived again with other learners", event.job_id, event.chunk_no)
                self.table[key] = ChunkNote(note.partition, note.offset, note.summary, conflict=True).to_dict()
            return  # the same chunk again (a client's retry, or this record after a crash): the first stands
        self.table[key] = ChunkNote(*where, summary).to_dict()
        opened = self._job(event.job_id) or OpenedJob(None, None, opened_at=at)
        if event.chunk_no > opened.highest_chunk:
            self.table[event.job_id] = OpenedJob(opened.partition, opened.offset, event.chunk_no,
                                                 opened_at=opened.opened_at).to_dict()

    async def _commit(self, event: JobCommitted) -> None:
        job_id = event.job_id
        opened = self._job(job_id)
        if opened is None or opened.partition is None or opened.offset is None:
            await self._reject(job_id, None, [Problem(
                field="job_id", code="job_not_opened",
                message="the commit names a job whose header (POST /api/v1/jobs with \"chunked\": true) never "
                        "arrived; nothing was sent")], opened, event.chunk_count)
            return
        notes = [self._note(job_id, n) for n in range(event.chunk_count)]
        extra = [n for n in range(event.chunk_count, opened.highest_chunk + 1)
                 if self.table.get(chunk_key(job_id, n)) is not None]
        check = check_commit(
            chunk_count=event.chunk_count, total_recipients=event.total_recipients, digest=event.digest,
            chunks=[note.summary if note else None for note in notes], extra=extra,
            conflicts=[n for n, note in enumerate(notes) if note is not None and note.conflict],
        )
        header = await self.ctx.ledger.fetch("job-requests", opened.partition, opened.offset)
        if not isinstance(header, JobOpened) or header.job_id != job_id:
            raise LookupError(f"job-requests[{opened.partition}]@{opened.offset} is not the header of job {job_id}")
        problems = list(check.problems)
        too_large = template_data_problem(header.template_data, self.ctx.settings.template_data_max_bytes)
        # Chosen once, here, as for a job sent whole (streams.agents.routing).
        resolved = self.ctx.company_templates.for_job(header)
        if too_large:
            problems.append(too_large)
        elif notes[0] is not None:  # the templates need a learner to check against: the first chunk's
            problems += await self._template_problems(header, resolved, notes[0])
        if problems:
            await self._reject(job_id, header.company_id, problems, opened, event.chunk_count)
            return
        places = [(note.partition, note.offset) for note in notes if note is not None]
        learners = LoggedLearners(self.reader, job_id, places, check.unique)
        accepted = await self.accept(header, check.repeats, (opened.partition, opened.offset), resolved, None,
                                     learners)
        if not accepted:  # waits for its budget: the timer lets it go through release(), reading these notes
            self.table[job_id] = OpenedJob(opened.partition, opened.offset, opened.highest_chunk,
                                           (event.chunk_count, check.unique, check.repeats),
                                           opened.opened_at).to_dict()
        self.ctx.known_jobs[job_id] = KnownJob("accepted" if accepted else "waiting", header.company_id).to_dict()
        log.info("chunked job %s committed: %d chunks, %d learners, %d repeats removed, %s", job_id,
                 event.chunk_count, check.unique, check.repeats, "dispatched" if accepted else "waiting")
        if accepted:
            self._forget(job_id, opened, event.chunk_count)

    async def _template_problems(self, header: JobOpened, resolved: ResolvedTemplate | None,
                                 first_note: ChunkNote) -> list[Problem]:
        """The templates checked against the first chunk's learners. Its own frame, so the decoded chunk (~8 MB
        for 10,000 learners) is freed here and not held by ``_commit`` while the whole job is cut into batches."""
        first = await self.ctx.ledger.fetch("job-requests", first_note.partition, first_note.offset)
        assert isinstance(first, RecipientChunkReceived)
        sample = header.model_copy(update={"recipients": first.recipients})
        return [p.as_problem() for p in job_template_problems(
            sample, self.ctx.settings,
            email_template=resolved.template if resolved and resolved.source == "company" else None)]

    def waiting_total(self, job_id: str) -> int | None:
        """The learners of a committed chunked job that waits for its budget; None for any other job."""
        opened = self._job(job_id)
        return opened.committed[1] if opened is not None and opened.committed is not None else None

    async def release(self, job_id: str, wait: BudgetWait) -> bool:
        """Route a chunked job waiting for its budget again (the budget timer); True once dispatched.

        Its notes are left in the table (a timer has no record whose partition a delete could take); they are a
        few hundred bytes per chunk and known-jobs already ignores any repeat of the job's records."""
        opened = self._job(job_id)
        if opened is None or opened.committed is None or opened.partition is None or opened.offset is None:
            raise LookupError(f"chunked job {job_id} waits for its budget but its notes are gone")
        chunk_count, unique, repeats = opened.committed
        notes = [self._note(job_id, n) for n in range(chunk_count)]
        places = [(note.partition, note.offset) for note in notes if note is not None]
        assert len(places) == chunk_count, f"chunked job {job_id}: a chunk note is gone"
        header = await self.ctx.ledger.fetch("job-requests", opened.partition, opened.offset)
        assert isinstance(header, JobOpened) and header.job_id == job_id
        resolved = self.ctx.company_templates.for_job(header)
        return await self.accept(header, repeats, (opened.partition, opened.offset), resolved, wait,
                                 LoggedLearners(self.reader, job_id, places, unique))

    async def _reject(self, job_id: str, company_id: int | None, problems: list[Problem],
                      opened: OpenedJob | None, chunk_count: int, *, callback_from: JobOpened | None = None) -> None:
        """``callback_from``: the header whose callback URL is told of the rejection (send-callbacks), when no
        client waits for the answer."""
        told = callback_from
        await self.ctx.publisher.send_and_wait(JobRejected(
            job_id=job_id, company_id=company_id, problems=problems,
            callback_url=told.callback_url if told else None,
            callback_query_sealed=told.callback_query_sealed if told else None,
            callback_key_id=told.callback_key_id if told else None))
        self.ctx.known_jobs[job_id] = KnownJob("rejected", company_id).to_dict()
        log.info("chunked job %s rejected at its commit: %s", job_id, "; ".join(p.message for p in problems))
        self._forget(job_id, opened, chunk_count)

    def _forget(self, job_id: str, opened: OpenedJob | None, chunk_count: int) -> None:
        """Drop the job's notes; called after known-jobs has the job, so nothing reads them again."""
        highest = max(chunk_count - 1, opened.highest_chunk if opened is not None else -1)
        for number in range(highest + 1):
            self.table.pop(chunk_key(job_id, number), None)
        self.table.pop(job_id, None)

    def _job(self, job_id: str) -> OpenedJob | None:
        raw = self.table.get(job_id)
        return OpenedJob.from_dict(raw) if raw is not None else None

    def _note(self, job_id: str, chunk_no: int) -> ChunkNote | None:
        raw = self.table.get(chunk_key(job_id, chunk_no))
        return ChunkNote.from_dict(raw) if raw is not None else None


def make_table(app: faust.App, partitions: int) -> TableT[str, dict[str, Any]]:
    """Keyed by job id and ``job:chunk``, written only by the route agent: the changelog partition is the one
    of the job-requests record being processed, so the owner of a job's partition holds its notes."""
    return app.Table("job-chunks", partitions=partitions, default=None)
