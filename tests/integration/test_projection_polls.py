"""The read models do not depend on how the log is cut into polls or in which order its topics are read.

The projector applies what one poll brought in one transaction, by bulk statements; a replay or a catch-up brings
large polls (a learner's first outcome and a retry run's outcome in one), the live projector small ones, and
topics arrive interleaved in any order. Every cut and order here must leave the same rows as applying the log
one event per transaction, in the order it was written.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from projections import recipients
from projections.base import Applied, Position
from projections.read_models import READ_MODELS, open_read_models
from schemas.events import (
    BatchCompleted,
    BatchDispatched,
    BatchWaitingForDependency,
    Event,
    FailedRecipient,
    JobAccepted,
    JobCompleted,
    JobFellBackToLocal,
    Recipient,
    RecipientDelivered,
    RecipientFailed,
    RecipientSent,
)
from tests.support.observe import READ_MODEL_TABLES, read_models

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
JOB = "polls-job"


def _batch(run: int, no: int, count: int, users: Sequence[int]) -> BatchDispatched:
    return BatchDispatched(job_id=JOB, run=run, batch_no=no, batch_count=count, type="email", company_id=7,
                           route="local", provider="smtp", template_id="course_reminder",
                           recipients=[Recipient(userid=u, email=f"l{u}@example.org") for u in users],
                           dispatched_at=T0)


def job_with_a_retry() -> list[Event]:
    """Two batches; learners 3 and 7 fail (retryable), 9 fails for good, 11 has no outcome; a retry run sends 3
    and 7."""
    at = [T0 + timedelta(seconds=s) for s in range(100)]
    log: list[Event] = [
        JobAccepted(job_id=JOB, type="email", company_id=7, route="local", reason="no cloud settings",
                    provider="smtp", template_id="course_reminder", total_recipients=10, batch_size=5,
                    batch_count=2, accepted_at=at[0]),
        _batch(0, 0, 2, range(1, 6)), _batch(0, 1, 2, range(6, 12)),  # learner 11: no outcome yet, pending
    ]
    for u in range(1, 11):
        if u in (3, 7, 9):
            log.append(RecipientFailed(job_id=JOB, batch_no=(u - 1) // 5, userid=u, email=f"l{u}@example.org",
                                       provider="smtp", error="451 try later" if u != 9 else "550 no such user",
                                       attempts=3, retryable=u != 9, failed_at=at[u]))
        else:
            log.append(RecipientSent(job_id=JOB, batch_no=(u - 1) // 5, userid=u, email=f"l{u}@example.org",
                                     provider="smtp", message_id=f"<{u}@x>", attempts=1, sent_at=at[u]))
    log += [
        RecipientDelivered(job_id=JOB, userid=1, email="l1@example.org", provider="smtp", provider_event_id="d1",
                           detail="250 ok", occurred_at=at[20], received_at=at[20]),
        JobFellBackToLocal(job_id=JOB, batch_no=1, from_provider="ses", to_provider="smtp", reason="test"),
        BatchWaitingForDependency(job_id=JOB, batch_no=1, dependency="smtp-relay",
                                  reason="smtp unavailable: connection refused", waiting_since=at[20]),
        BatchCompleted(job_id=JOB, batch_no=0, batch_count=2, succeeded=4, failed=1,
                       failures=[FailedRecipient(userid=3, retryable=True)], completed_at=at[21]),
        BatchCompleted(job_id=JOB, batch_no=1, batch_count=2, succeeded=3, failed=2,
                       failures=[FailedRecipient(userid=7, retryable=True), FailedRecipient(userid=9, retryable=False)],
                       completed_at=at[22]),
        JobCompleted(job_id=JOB, total=10, succeeded=7, failed=3, completed_at=at[23]),
        _batch(1, 0, 1, [3, 7]),
        RecipientSent(job_id=JOB, run=1, batch_no=0, userid=3, email="l3@example.org", provider="smtp",
                      message_id="<3@x>", attempts=1, sent_at=at[30]),
        RecipientSent(job_id=JOB, run=1, batch_no=0, userid=7, email="l7@example.org", provider="smtp",
                      message_id="<7@x>", attempts=1, sent_at=at[31]),
        BatchCompleted(job_id=JOB, run=1, batch_no=0, batch_count=1, succeeded=2, failed=0, completed_at=at[32]),
        JobCompleted(job_id=JOB, run=1, total=2, succeeded=2, failed=0, completed_at=at[33]),
    ]
    return log


def positioned(log: Sequence[Event]) -> list[Applied]:
    """Each event at its place in its topic (offsets count per topic, as on a one-partition topic)."""
    offsets: dict[str, int] = {}
    out = []
    for i, event in enumerate(log):
        offset = offsets.get(event.topic, 0)
        offsets[event.topic] = offset + 1
        out.append((Position(event.topic, 0, offset, T0 + timedelta(milliseconds=i)), event))
    return out


async def project(schema_settings, polls: Sequence[Sequence[Applied]], *, built_apart: bool = False,
                  fresh: bool = False) -> None:
    """Each poll in one transaction; ``built_apart``: as a replay applies it, its outcomes and batches topics'
    events turned into rows by recipients.build (projections/decoder.py) and only the rest applied as events;
    ``fresh``: as a replay into a schema it dropped builds them (each schema here starts empty)."""
    conn = await open_read_models(schema_settings)
    written = recipients.Written(fresh=fresh)  # as the decoder process keeps it, across the polls
    try:
        for poll in polls:
            built, events = _built(poll, written) if built_apart else (None, poll)
            async with conn.transaction(), conn.cursor() as cur:
                for model in READ_MODELS:
                    if model is recipients:
                        await recipients.apply(cur, events, built)
                    else:
                        await model.apply(cur, events)
    finally:
        await conn.close()


def _built(poll: Sequence[Applied], written: recipients.Written) -> tuple[recipients.Copied, list[Applied]]:
    apart = [i for i, (position, _) in enumerate(poll) if position.topic in ("outcomes", "batches")]
    built, others = recipients.build((poll[i][1] for i in apart), written)
    left = {apart[i] for i in others} | set(range(len(poll))) - set(apart)
    return recipients.copied(built), [applied for i, applied in enumerate(poll) if i in left]


def by_topic_order(events: list[Applied], order: Sequence[str]) -> list[Applied]:
    return sorted(events, key=lambda item: (order.index(item[0].topic), item[0].offset))


def shuffled_topics(events: list[Applied], rng: random.Random) -> list[Applied]:
    """Topics interleaved at random, each topic's own order kept (what a consumer of several topics sees)."""
    queues = {topic: [e for e in events if e[0].topic == topic] for topic in {e[0].topic for e in events}}
    out = []
    while queues:
        topic = rng.choice(sorted(queues))
        out.append(queues[topic].pop(0))
        if not queues[topic]:
            del queues[topic]
    return out


def cut(events: list[Applied], size: int) -> list[list[Applied]]:
    return [events[i:i + size] for i in range(0, len(events), size)]


async def test_any_cut_into_polls_and_any_topic_order_leave_the_same_rows(settings_factory) -> None:
    base = settings_factory()
    events = positioned(job_with_a_retry())
    rng = random.Random(14)
    variants = {
        "one event per poll, as written": [[e] for e in events],
        "the whole log in one poll": [events],
        "polls of three": cut(events, 3),
        "outcomes topic first, one poll": [by_topic_order(events, ["outcomes", "jobs", "batches"])],
        "jobs topic first, polls of four": cut(by_topic_order(events, ["jobs", "batches", "outcomes"]), 4),
        **{f"random interleaving {i}, random cuts": cut(shuffled_topics(events, rng), rng.randint(1, 12))
           for i in range(4)},
        **{f"rows built apart (a replay): random interleaving {i}, random cuts":
           cut(shuffled_topics(events, rng), rng.randint(1, 12)) for i in range(3)},
        "rows built apart (a replay): batches last, the whole log in one poll":
            [by_topic_order(events, ["outcomes", "jobs", "batches"])],
        "rows built apart (a replay): batches last, polls of three":
            cut(by_topic_order(events, ["outcomes", "jobs", "batches"]), 3),
        **{f"rows built apart into a fresh schema: random interleaving {i}, random cuts":
           cut(shuffled_topics(events, rng), rng.randint(1, 12)) for i in range(4)},
        "rows built apart into a fresh schema: batches first, polls of three":
            cut(by_topic_order(events, ["batches", "jobs", "outcomes"]), 3),
        "rows built apart into a fresh schema: batches last, polls of two":
            cut(by_topic_order(events, ["outcomes", "jobs", "batches"]), 2),
        "rows built apart into a fresh schema: the whole log in one poll": [events],
    }
    results = {}
    for name, polls in variants.items():
        schema = f"{base.projection_schema}_{len(results)}"
        view = base.model_copy(update={"projection_schema": schema})
        await project(view, polls, built_apart="built apart" in name, fresh="fresh schema" in name)
        results[name] = read_models(view, schema)
        with psycopg.connect(base.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))

    reference = results.pop("one event per poll, as written")
    job = reference["jobs"][0]
    assert (job["status"], job["succeeded"], job["failed"], job["delivered"], job["batches_done"],
            job["batch_count"], job["fell_back"], job["pacing"]) == ("completed", 9, 1, 1, 3, 3, True, None)
    learners = {r["userid"]: r for r in reference["job_recipients"]}
    assert (learners[3]["status"], learners[3]["run"], learners[9]["status"], learners[11]["status"]) == (
        "sent", 1, "failed", "pending")
    for name, rows in results.items():
        for table in READ_MODEL_TABLES:
            differences = [(i, k, row.get(k), ref.get(k)) for i, (row, ref) in enumerate(
                zip(rows[table], reference[table], strict=False)) for k in ref if row.get(k) != ref.get(k)]
            assert rows[table] == reference[table], f"{name}: {table}: {differences[:5]}"


@pytest.mark.parametrize("cut_size", [1, 3])
async def test_a_wait_shows_as_the_jobs_pacing_until_a_batch_completes_after_it(settings_factory, cut_size) -> None:
    """A batch's BatchCompleted ends a wait said before it, in any batch of the job (the job moves again), and
    leaves alone one said after it, in one poll or several."""
    settings = settings_factory()
    log = job_with_a_retry()[:2]
    waiting = BatchWaitingForDependency(job_id=JOB, batch_no=1, dependency="storage local",
                                        reason="local certificate store /srv/certs: [Errno 28] No space left on device")
    completed = BatchCompleted(job_id=JOB, batch_no=0, batch_count=2, succeeded=5, failed=0, completed_at=T0)
    for events, pacing in (([*log, waiting, completed], None),
                           ([*log, completed, waiting], f"waiting for storage local: {waiting.reason}")):
        schema = f"{settings.projection_schema}_{len(events)}_{pacing is None}"
        view = settings.model_copy(update={"projection_schema": schema})
        await project(view, cut(positioned(events), cut_size))
        assert read_models(view, schema)["jobs"][0]["pacing"] == pacing
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
