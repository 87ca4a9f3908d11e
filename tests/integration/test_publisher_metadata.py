"""A topic the producer learned of from a full metadata fetch stays known once it tracks another topic.

Seen in CI (2026-12-03): a Mailgun bounce report was answered 500 after 30 s with NotLeaderForPartitionError.
aiokafka asks the broker about every topic while it tracks none (the API's health ping does that, so does its
periodic refresh), and about the tracked ones only once it tracks any; a send to a topic it had not heard of
tracks that one, and the next refresh dropped every topic known only from the full fetch. A batch already waiting
for such a topic then found no leader until it expired. Here on a real broker: a full fetch, then a topic the
producer never heard of, then one send to a known topic and one to the new one; both must land.
The worker's Faust producer (the tables' changelogs) is held to the same: there the stranded batch would wait out
Faust's 1,200 s request timeout. Faust's producer does not linger, so the window is the time a batch waits for its
turn to be sent (under load); here it lingers, so the batch is still waiting when the refresh lands."""

from __future__ import annotations

import asyncio

import faust
import pytest

from config.settings import Settings
from eventlog.publisher import EventPublisher
from schemas.envelope import encode
from schemas.events import RecipientSent
from streams.transport import use_fuller_fetches
from tests.support.observe import events
from tests.support.topics import create_topic

pytestmark = pytest.mark.integration


def sent(userid: int) -> RecipientSent:
    return RecipientSent(job_id="metadata-job", batch_no=0, userid=userid, email=f"learner{userid}@example.org",
                         provider="smtp", message_id=f"<{userid}@test>", attempts=1)


async def send_after_a_full_fetch(settings: Settings, late: str) -> None:
    publisher = EventPublisher(settings, source="urn:manireports:offload:test")
    await publisher.start()
    try:
        await publisher.ping(timeout=10)  # every topic known, none tracked
        await create_topic(settings.kafka_bootstrap_servers, late, settings.outcome_partitions)
        known = await publisher.send(sent(1))  # a topic known from the full fetch, its batch lingering
        new = await publisher.send_record(encode(sent(2), source="urn:test"), topic=late)  # tracked first here
        # Bounded inside the producer's 30 s request timeout, after which a batch without a leader fails.
        await asyncio.wait_for(asyncio.gather(known, new), timeout=20)
    finally:
        await publisher.stop()


def test_a_topic_known_from_a_full_fetch_is_kept_when_another_is_first_sent_to(settings_factory, topics_for):
    settings = settings_factory()
    topics_for(settings)
    late = settings.topic("late")
    asyncio.run(send_after_a_full_fetch(settings, late))
    assert [e.userid for e in events(settings, "outcomes") if isinstance(e, RecipientSent)] == [1]


async def send_through_faust_after_a_full_fetch(settings: Settings, known: str, late: str) -> None:
    # A stranded batch fails after 30 s, not Faust's 1,200 s, so that stopping the producer does not wait that long.
    app = faust.App(settings.app_id, broker=f"kafka://{settings.kafka_bootstrap_servers}", producer_linger=0.5,
                    producer_request_timeout=30)
    use_fuller_fetches(app)  # the worker's transport (streams.app), its producer with it
    producer = app.producer
    await producer.start()
    try:
        # What Faust does after creating a topic: a refresh of every topic, as none is tracked.
        await producer._ensure_producer().client.force_metadata_update()
        await create_topic(settings.kafka_bootstrap_servers, late, 1)
        first = await producer.send(known, b"k", b"known", partition=0, timestamp=None, headers=None)
        second = await producer.send(late, b"k", b"late", partition=0, timestamp=None, headers=None)
        await asyncio.wait_for(asyncio.gather(first, second), timeout=20)
    finally:
        await producer.stop()


def test_the_workers_faust_producer_keeps_a_topic_known_from_a_full_fetch(settings_factory):
    settings = settings_factory()
    known, late = settings.topic("known"), settings.topic("late")
    asyncio.run(create_topic(settings.kafka_bootstrap_servers, known, 1))
    asyncio.run(send_through_faust_after_a_full_fetch(settings, known, late))
