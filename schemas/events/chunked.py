"""A job sent in parts (topic ``job-requests``, keyed by job id so the parts stay in order on one partition):
the job's header, its learners in numbered chunks, and the commit that closes it.

A job of any size travels this way: no record holds the whole list, and the worker cuts batches chunk by chunk
after the commit. Nothing of a job is sent before its JobCommitted, and a commit that does not match the chunks
(one missing, a count or digest that differs) rejects the job with a JobRejected saying which. A job left open
(never committed) longer than ``OFFLOAD_CHUNKED_JOB_MAX_OPEN_HOURS`` is closed by a ChunkedJobExpired, which the
route agent turns into a JobRejected (code ``chunked_job_not_committed``).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import AwareDatetime, Field, field_validator

from schemas.events.base import Event, utcnow
from schemas.events.jobs import JobId, JobRequested, Recipient

# A chunk's learners must be sorted by userid (ascending; chunk n+1 starts at or after where chunk n ended), so
# a learner listed twice is always next to the other listing: the worker finds every repeat exactly while
# holding one userid, never the whole list.
CHUNK_ORDER = "recipients sorted by userid, ascending within a chunk and from one chunk to the next"
# The JobRejected problem code of a chunked job closed for staying open too long (ChunkedJobExpired).
NOT_COMMITTED = "chunked_job_not_committed"


class JobOpened(JobRequested):
    """The header of a job sent in parts: a JobRequested without its learners, who follow in chunks."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.opened.v1"
    topic: ClassVar[str] = "job-requests"

    recipients: list[Recipient] = Field(
        default_factory=list, description="always empty: the learners follow in RecipientChunkReceived events",
    )

    @field_validator("recipients")
    @classmethod
    def _no_learners(cls, value: list[Recipient]) -> list[Recipient]:
        # Checked in code, not as maxItems 0 in the schema: generic record builders ignore maxItems.
        if value:
            raise ValueError("a chunked job's header carries no recipients: they follow in chunks")
        return value


class RecipientChunkReceived(Event):
    """One numbered part of a chunked job's learners."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.recipient-chunk.v1"
    topic: ClassVar[str] = "job-requests"

    job_id: JobId
    chunk_no: int = Field(ge=0, le=1_000_000, description="0, 1, 2, … in the order the learners are sorted")
    recipients: list[Recipient] = Field(min_length=1, description=CHUNK_ORDER)
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="chunk_digest of these learners' userids (schemas.chunking)")
    received_at: AwareDatetime = Field(default_factory=utcnow)


class JobCommitted(Event):
    """The client has sent every chunk: the job may be served once the chunks match what this says."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.committed.v1"
    topic: ClassVar[str] = "job-requests"

    job_id: JobId
    chunk_count: int = Field(ge=1, le=1_000_001, description="chunks 0 … chunk_count-1 must all have arrived")
    total_recipients: int = Field(ge=1, description="learners over every chunk, repeats included")
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="job_digest over the chunks' digests in chunk order (schemas.chunking)")
    committed_at: AwareDatetime = Field(default_factory=utcnow)


class ChunkedJobExpired(Event):
    """A worker found a chunked job still open (no JobCommitted) longer than the limit and closes it. Written to
    job-requests under the job's key, so the route agent reads it in order with the job's own records: a commit
    that came first wins (this is then ignored); otherwise the job is rejected (JobRejected, code
    ``chunked_job_not_committed``) and a later commit or chunk changes nothing."""

    ce_type: ClassVar[str] = "org.manireports.offload.job.chunked-expired.v1"
    topic: ClassVar[str] = "job-requests"

    job_id: JobId
    company_id: int | None = Field(default=None, description="None when only chunks arrived, no header")
    opened_at: AwareDatetime = Field(description="when the job's first record (header or chunk) reached the log")
    max_open_hours: float = Field(gt=0, description="the limit it passed (OFFLOAD_CHUNKED_JOB_MAX_OPEN_HOURS)")
    chunks_received: int = Field(ge=0, description="the highest chunk number seen, plus one")
    expired_at: AwareDatetime = Field(default_factory=utcnow)
