"""Pure logic of jobs sent in parts: what a chunk says about itself, and whether a commit matches its chunks.

Learners arrive sorted by userid (``schemas.events.CHUNK_ORDER``), so a repeated learner always sits next to the
other listing, within a chunk or across the boundary of two chunks. Repeats are then counted exactly from five
numbers per chunk (count, distinct, first, last, sorted) and removed while streaming with one userid of memory:
no seen-set that grows with the job, and nothing to rebuild after a crash.

Digests (optional for clients, computed by the API and the worker): a chunk's digest is the SHA-256 of its
userids in order, each in decimal followed by a newline; the job's digest is the SHA-256 of the chunks' hex
digests concatenated in chunk order. Both are cheap to compute in PHP or SQL as well.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from schemas.events import CHUNK_ORDER, Problem, Recipient

_LISTED = 20


@dataclass(frozen=True, slots=True)
class ChunkSummary:
    """What the commit check needs of one chunk; the worker keeps this, never the chunk's learners."""

    count: int
    distinct: int  # learners in the chunk, a userid repeated next to itself counted once
    first: int
    last: int
    sorted: bool
    digest: str


def chunk_digest(userids: Iterable[int]) -> str:
    h = hashlib.sha256()
    for userid in userids:
        h.update(b"%d\n" % userid)
    return h.hexdigest()


def job_digest(chunk_digests: Iterable[str]) -> str:
    return hashlib.sha256("".join(chunk_digests).encode()).hexdigest()


def summarize(recipients: Sequence[Recipient]) -> ChunkSummary:
    userids = [r.userid for r in recipients]
    distinct = 1
    in_order = True
    for before, after in zip(userids, userids[1:], strict=False):
        if after < before:
            in_order = False
        elif after != before:
            distinct += 1
    return ChunkSummary(len(userids), distinct, userids[0], userids[-1], in_order, chunk_digest(userids))


def unsorted_at(recipients: Sequence[Recipient]) -> int | None:
    """The index of the first learner whose userid is below the one before, or None when sorted."""
    for index in range(1, len(recipients)):
        if recipients[index].userid < recipients[index - 1].userid:
            return index
    return None


def without_repeats(recipients: Iterable[Recipient], last: int | None) -> Iterator[Recipient]:
    """Sorted learners with each userid once, ``last`` being the userid served just before them (None: none)."""
    for recipient in recipients:
        if recipient.userid != last:
            last = recipient.userid
            yield recipient


@dataclass(frozen=True, slots=True)
class CommitCheck:
    problems: tuple[Problem, ...]
    unique: int  # learners to serve
    repeats: int  # listings removed because the learner was listed already


def _numbers(found: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in found[:_LISTED])
    return shown + (f" and {len(found) - _LISTED} more" if len(found) > _LISTED else "")


def check_commit(*, chunk_count: int, total_recipients: int, digest: str | None,
                 chunks: Sequence[ChunkSummary | None], extra: Sequence[int] = (),
                 conflicts: Sequence[int] = ()) -> CommitCheck:
    """Every problem of a commit against the chunks that arrived (``chunks[n]`` None: chunk n never did)."""
    assert len(chunks) == chunk_count
    problems: list[Problem] = []
    missing = [n for n, chunk in enumerate(chunks) if chunk is None]
    if missing:
        problems.append(Problem(field="chunk_count", code="missing_chunks",
                                message=f"chunk(s) {_numbers(missing)} of {chunk_count} never arrived; nothing was "
                                        "sent: submit the job again under a new job id"))
    if extra:
        problems.append(Problem(field="chunk_count", code="unexpected_chunks",
                                message=f"chunk(s) {_numbers(list(extra))} arrived but the commit names only "
                                        f"{chunk_count} chunk(s) (0 to {chunk_count - 1})"))
    if conflicts:
        problems.append(Problem(field="chunks", code="chunk_conflict",
                                message=f"chunk(s) {_numbers(list(conflicts))} arrived twice with different "
                                        "learners; a chunk sent again must be the same"))
    unique = repeats = 0
    previous: ChunkSummary | None = None
    for number, chunk in enumerate(chunks):
        if chunk is None:
            previous = None
            continue
        if not chunk.sorted:
            problems.append(Problem(field=f"chunks.{number}", code="unsorted_chunk",
                                    message=f"chunk {number} is not sorted by userid: send {CHUNK_ORDER}"))
        joined = previous is not None and chunk.first == previous.last
        if previous is not None and chunk.first < previous.last:
            problems.append(Problem(field=f"chunks.{number}", code="unsorted_chunk",
                                    message=f"chunk {number} starts at userid {chunk.first}, below userid "
                                            f"{previous.last} where chunk {number - 1} ended: send "
                                            f"{CHUNK_ORDER}"))
        served = chunk.distinct - (1 if joined else 0)
        unique += served
        repeats += chunk.count - served
        previous = chunk
    received = sum(chunk.count for chunk in chunks if chunk is not None)
    if not missing and received != total_recipients:
        problems.append(Problem(field="total_recipients", code="recipient_count_mismatch",
                                message=f"the commit says {total_recipients} learners; the chunks hold {received}"))
    if not missing and digest is not None:
        found = job_digest(chunk.digest for chunk in chunks if chunk is not None)
        if found != digest:
            problems.append(Problem(field="digest", code="digest_mismatch",
                                    message=f"the commit's digest {digest} differs from the chunks' {found}"))
    return CommitCheck(tuple(problems), unique, repeats)

