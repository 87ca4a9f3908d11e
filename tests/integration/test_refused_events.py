"""An event the broker refuses is produced again by a new producer, and a batch's outcomes are never reported
recorded while one of them is not in the log.

Seen in the fault suite: a single broker restarted left the outcomes partition without a leader for ~30 s, a batch
of outcomes waited out the producer's request timeout, and the idempotent producer's numbering for that partition
then had a gap the broker refused for good (OutOfOrderSequenceNumber). Every later outcome of the job was refused,
the batches were reported done all the same, and the job completed with 1,118 of its 4,000 sends in the log. Here
the gap is made directly, on a real broker: the producer's next number for the partition is moved on, as a batch
that timed out moves it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from config.settings import Settings
from eventlog.publisher import DELIVERY, EventPublisher
from resilience.dependencies import Dependencies
from schemas.events import RecipientSent
from streams.batchwork import OutcomeRecorder
from tests.support.observe import events

pytestmark = pytest.mark.integration

JOB = "refused-job"


def sent(userid: int) -> RecipientSent:
    return RecipientSent(job_id=JOB, batch_no=0, userid=userid, email=f"learner{userid}@example.org",
                         provider="smtp", message_id=f"<{userid}@test>", attempts=1)


def leave_a_gap(publisher: EventPublisher, settings: Settings) -> None:
    """Number the next outcome of the job as if a batch of 5 before it had timed out (aiokafka's private state:
    there is no public way to make a batch wait out its timeout on a broker that answers)."""
    producer: Any = publisher._producer  # noqa: SLF001
    tp = TopicPartition(settings.topic("outcomes"), publisher.partition_of("outcomes", JOB.encode()))
    producer._txn_manager.increment_sequence_number(tp, 5)  # noqa: SLF001


@asynccontextmanager
async def across_a_gap(settings: Settings,
                       dependencies: Dependencies) -> AsyncIterator[tuple[EventPublisher, OutcomeRecorder]]:
    """A publisher and a batch's recorder whose first outcome landed, and whose next one the broker will refuse."""
    publisher = EventPublisher(settings, source="urn:manireports:offload:test", dependencies=dependencies)
    await publisher.start()
    try:
        recorder = OutcomeRecorder(SimpleNamespace(publisher=publisher))  # type: ignore[arg-type]
        await recorder.record(sent(1))
        await recorder.flush()
        leave_a_gap(publisher, settings)
        yield publisher, recorder
    finally:
        await publisher.stop()


async def record_across_a_gap(settings: Settings, dependencies: Dependencies) -> int:
    async with across_a_gap(settings, dependencies) as (publisher, recorder):
        for userid in (2, 3):
            await recorder.record(sent(userid))
        await recorder.flush()  # refused, then produced again by a new producer
        await recorder.record(sent(4))  # and the new producer goes on serving
        await recorder.flush()
        return publisher.replacements


def test_outcomes_the_broker_refuses_are_produced_again_and_land_once(settings_factory, topics_for):
    settings = settings_factory()
    topics_for(settings)
    dependencies = Dependencies()
    assert asyncio.run(record_across_a_gap(settings, dependencies)) == 1
    landed = sorted(e.userid for e in events(settings, "outcomes") if isinstance(e, RecipientSent))
    assert landed == [1, 2, 3, 4]
    delivery = dependencies.snapshot()[DELIVERY]  # health and /metrics saw the refusal and the new producer
    assert (delivery.up, delivery.losses, delivery.reconnects) == (True, 1, 1)


async def keep_refusing(settings: Settings, take_over: str) -> tuple[BaseException, int]:
    """A flush whose outcome is refused at every attempt: it raises, and a second flush raises again."""
    dependencies = Dependencies()
    async with across_a_gap(settings, dependencies) as (publisher, recorder):
        await recorder.record(sent(2))
        with pytest.raises(Exception) as first:
            await recorder.flush(attempts=1)  # no second attempt: refused once, given up
        with pytest.raises(Exception) as again:
            await recorder.flush(attempts=1)  # still refused: never reported done
        assert type(again.value) is type(first.value)
        replacements = publisher.replacements
        # No send follows: health says so, and its recheck (what an idle worker's watch runs) or the API's health
        # ping has a new producer take over, so the process does not stay degraded until its next send.
        assert dependencies.down()[DELIVERY].startswith("a delivery failed (OutOfOrderSequenceNumber")
        if take_over == "recheck":
            await dependencies.rechecks()[DELIVERY]()
        else:
            await publisher.ping(timeout=10)
        assert DELIVERY not in dependencies.down() and publisher.replacements == replacements + 1
        return first.value, replacements


@pytest.mark.parametrize("take_over", ["recheck", "ping"])
def test_a_flush_that_gives_up_raises_again_rather_than_reporting_the_outcome_recorded(
    settings_factory, topics_for, take_over
):
    settings = settings_factory()
    topics_for(settings)
    refusal, replacements = asyncio.run(keep_refusing(settings, take_over))
    assert type(refusal).__name__ == "OutOfOrderSequenceNumber"
    assert replacements == 0  # replaced only before the next send, and there was none
    assert [e.userid for e in events(settings, "outcomes") if isinstance(e, RecipientSent)] == [1]
