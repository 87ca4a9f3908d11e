"""recipients.build: a replay turns a poll's outcomes and first-run batches into rows apart from its other events
(projections/decoder.py), so those events must be read by job_recipients alone, and its rows must be the ones
applying the events would make."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from projections import projector, recipients
from projections.base import Position
from schemas.events import (
    BatchDispatched,
    CertificateIssued,
    Event,
    Recipient,
    RecipientDelivered,
    RecipientFailed,
    RecipientSent,
)
from schemas.events.suppression import RecipientSuppressed
from schemas.samples import samples

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Statements:
    """A cursor that only notes what a read model asks of it; anything else it is asked fails the test."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def execute(self, query: object, params: object = None) -> None:
        self.seen.append(str(query))

    async def executemany(self, query: object, params: object) -> None:
        self.seen.append(str(query))


def _samples(cls: type[Event]) -> list[Event]:
    return [cls.model_validate(data) for data in samples(cls.model_json_schema()).values()]


BUILT_KINDS = [*_samples(RecipientSent), *_samples(RecipientFailed), *_samples(RecipientSuppressed),
               *_samples(CertificateIssued), *[b for b in _samples(BatchDispatched) if b.run == 0]]


@pytest.mark.parametrize("model", [m for m in projector.READ_MODELS if m is not recipients],
                         ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_no_other_read_model_reads_what_build_takes(model) -> None:
    events = [(Position("t", 0, i, T0), e) for i, e in enumerate(BUILT_KINDS)]
    assert any(isinstance(e, BatchDispatched) for _, e in events)  # the samples hold a first-run batch
    cursor = Statements()
    asyncio.run(model.apply(cursor, events))
    assert cursor.seen == []


def _sent(user: int, run: int = 0) -> RecipientSent:
    return RecipientSent(job_id="j", run=run, batch_no=0, userid=user, email=f"l{user}@example.org",
                         provider="smtp", message_id=f"<{user}.{run}@x>", attempts=1, sent_at=T0)


def _batch(run: int, users: list[int]) -> BatchDispatched:
    return BatchDispatched(job_id="j", run=run, batch_no=0, batch_count=1, type="email", company_id=7,
                           route="local", provider="smtp", template_id="t",
                           recipients=[Recipient(userid=u, email=f"l{u}@example.org") for u in users],
                           dispatched_at=T0)


def test_build_makes_the_rows_the_events_make_and_leaves_the_rest() -> None:
    delivered = RecipientDelivered(job_id="j", userid=1, email="l1@example.org", provider="smtp",
                                   provider_event_id="d1", detail="250 ok", occurred_at=T0, received_at=T0)
    failed = RecipientFailed(job_id="j", batch_no=0, userid=2, email="l2@example.org", provider="smtp",
                             error="451 later", attempts=3, retryable=True, failed_at=T0)
    log: list[Event | None] = [_batch(0, [1, 2, 3]), _sent(1), failed, None, delivered, _batch(1, [2]),
                               _sent(2, run=1), _sent(3), _sent(3)]
    built, others = recipients.build(log)
    assert others == [3, 4, 5]  # the undecodable record, the report and the retry run's batch

    whole = recipients._rows([(Position("t", 0, i, T0), e) for i, e in enumerate(log) if e is not None],
                             built_apart=False)
    apart = recipients._rows([(Position("t", 0, i, T0), log[i]) for i in others if log[i] is not None],
                             built_apart=True)
    assert (list(whole.outcomes.values()), whole.pending) == (built.outcomes, built.pending)
    assert (apart.retried, apart.reports) == (whole.retried, whole.reports)
    assert not apart.outcomes and not apart.pending
    assert [row[:5] for row in built.outcomes] == [("j", 1, "l1@example.org", "sent", 0),
                                                   ("j", 2, "l2@example.org", "sent", 1),
                                                   ("j", 3, "l3@example.org", "sent", 0)]
    assert len(built.pending) == 3 and len(whole.retried) == 1 and len(whole.reports) == 1


def test_rows_refuse_an_outcome_among_the_events_when_they_were_built_apart() -> None:
    with pytest.raises(AssertionError):
        recipients._rows([(Position("t", 0, 0, T0), _sent(2))], built_apart=True)


def test_pending_rows_of_learners_an_earlier_call_wrote_are_left_out() -> None:
    written = recipients.Written()
    recipients.build([_sent(1), _sent(2)], written)
    built, _ = recipients.build([_batch(0, [1, 2, 3])], written)
    assert [row[1] for row in built.pending] == [3]
    built, _ = recipients.build([_batch(0, [4]), _sent(4)], written)  # in one call: one transaction, kept
    assert [row[1] for row in built.pending] == [4]
    assert written.has("j", 4) and not written.has("other", 4)


def test_written_stops_noting_at_its_limit() -> None:
    written = recipients.Written(limit=2)
    recipients.build([_sent(1), _sent(2), _sent(3)], written)
    built, _ = recipients.build([_batch(0, [1, 2, 3])], written)
    assert [row[1] for row in built.pending] == [3] and written.count == 2


def test_into_a_fresh_schema_outcomes_of_learners_without_a_row_are_fresh() -> None:
    written = recipients.Written(fresh=True)
    # Learner 2's outcome and pending row in one call: the pending row is left out, the outcome's row is fresh.
    built, _ = recipients.build([_batch(0, [1, 2]), _sent(2)], written)
    assert ([r[1] for r in built.pending], [r[1] for r in built.fresh], built.outcomes) == ([1], [2], [])
    # Learner 1 has a pending row (an earlier call's), learner 2 an outcome's: theirs take the upsert; 3 is new.
    built, _ = recipients.build([_sent(1), _sent(2, run=1), _sent(3)], written)
    assert ([r[1] for r in built.outcomes], [r[1] for r in built.fresh]) == ([1, 2], [3])
    # Not fresh (a catch-up into a schema with rows): every outcome takes the upsert.
    built, _ = recipients.build([_sent(4)], recipients.Written())
    assert ([r[1] for r in built.outcomes], built.fresh) == ([4], [])


def test_a_note_refused_at_the_limit_ends_fresh_rows() -> None:
    written = recipients.Written(limit=2, fresh=True)
    built, _ = recipients.build([_sent(1), _sent(2), _sent(3)], written)
    assert ([r[1] for r in built.fresh], [r[1] for r in built.outcomes]) == ([1, 2], [3])  # 3 is not noted
    assert not written.fresh
    built, _ = recipients.build([_sent(3, run=1), _sent(4)], written)
    assert ([r[1] for r in built.outcomes], built.fresh) == ([3, 4], [])


def test_fresh_rows_count_for_their_jobs_as_the_upsert_counts_rows_with_no_previous_state() -> None:
    suppressed = RecipientSuppressed.model_validate({**_samples(RecipientSuppressed)[0].model_dump(), "job_id": "k",
                                                     "userid": 9, "suppressed_at": T0 - timedelta(hours=1)})
    failed = RecipientFailed(job_id="j", batch_no=0, userid=2, email="l2@example.org", provider="smtp",
                             error="550 no", attempts=1, retryable=False, failed_at=T0 - timedelta(minutes=5))
    built, _ = recipients.build([_sent(1), failed, _sent(3), suppressed], recipients.Written(fresh=True))
    assert recipients.copied(built).counts == (["j", "k"], [2, 0], [1, 0], [0, 1],
                                               [T0 - timedelta(minutes=5), T0 - timedelta(hours=1)])
    assert recipients.copied(recipients.build([], recipients.Written(fresh=True))[0]).counts == ()
