"""Jobs sent in parts, the pure part (schemas.chunking): repeats across chunks counted exactly from the chunk
summaries, the same learners kept when streaming, and every way a commit can disagree with its chunks."""

from __future__ import annotations

import random

import pytest

from schemas.chunking import check_commit, chunk_digest, job_digest, summarize, without_repeats
from schemas.events import Recipient
from schemas.intake import unique_recipients


def people(userids: list[int]) -> list[Recipient]:
    return [Recipient(userid=u, email=f"l{u}-{i}@example.org") for i, u in enumerate(userids)]


def split(items: list[Recipient], rng: random.Random) -> list[list[Recipient]]:
    cuts = sorted(rng.sample(range(1, len(items)), k=min(len(items) - 1, rng.randint(0, 6))))
    return [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True)]


@pytest.mark.parametrize("seed", range(200))
def test_repeats_are_counted_exactly_and_streaming_keeps_the_first_listing_of_each_learner(seed):
    rng = random.Random(seed)
    listed = sorted(rng.choices(range(1, rng.randint(2, 40)), k=rng.randint(1, 80)))
    learners = people(listed)
    chunks = split(learners, rng)
    check = check_commit(chunk_count=len(chunks), total_recipients=len(listed),
                         digest=job_digest(summarize(c).digest for c in chunks), chunks=[summarize(c) for c in chunks])
    assert check.problems == ()
    assert (check.unique, check.repeats) == (len(set(listed)), len(listed) - len(set(listed)))
    streamed, last = [], None
    for chunk in chunks:
        streamed += without_repeats(chunk, last)
        last = chunk[-1].userid
    assert streamed == unique_recipients(learners)  # the same learners, the same (first) listing of each


def test_a_commit_names_every_way_it_disagrees_with_its_chunks():
    a, b, c = summarize(people([1, 2, 3])), summarize(people([3, 4])), summarize(people([9, 7]))
    check = check_commit(chunk_count=4, total_recipients=5, digest=None, chunks=[a, None, b, None], extra=[5, 6],
                         conflicts=[2])
    assert [(p.code, p.field) for p in check.problems] == [
        ("missing_chunks", "chunk_count"), ("unexpected_chunks", "chunk_count"), ("chunk_conflict", "chunks")]
    assert "chunk(s) 1, 3 of 4 never arrived" in check.problems[0].message

    check = check_commit(chunk_count=3, total_recipients=8, digest=job_digest([a.digest, b.digest, c.digest]),
                         chunks=[a, c, b])
    assert [(p.code, p.field) for p in check.problems] == [
        ("unsorted_chunk", "chunks.1"), ("unsorted_chunk", "chunks.2"), ("recipient_count_mismatch", "total_recipients"),
        ("digest_mismatch", "digest")]


def test_the_digests_are_the_documented_sha256_sums():
    import hashlib

    assert chunk_digest([3, 10]) == hashlib.sha256(b"3\n10\n").hexdigest()
    assert job_digest(["ab", "cd"]) == hashlib.sha256(b"abcd").hexdigest()


def test_the_route_agents_chunk_notes_read_back_what_they_wrote_and_refuse_unknown_fields():
    from streams.chunked_jobs import ChunkNote, OpenedJob

    note = ChunkNote(1, 42, summarize(people([3, 3, 5])), conflict=True)
    assert ChunkNote.from_dict(note.to_dict()) == note
    opened = OpenedJob(2, 7, highest_chunk=4, committed=(5, 900, 12))
    assert OpenedJob.from_dict(opened.to_dict()) == opened
    with pytest.raises(ValueError, match="unknown field"):
        OpenedJob.from_dict({**opened.to_dict(), "highest_chnuk": 3})
