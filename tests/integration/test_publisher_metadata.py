"""A topic the producer learned of from a full metadata fetch stays known once it tracks another topic.

Seen in CI (2026-12-03): a Mailgun bounce report was answered 500 after 30 s with NotLeaderForPartitionError.
aiokafka asks the broker about every topic while it tracks none (the API's health ping does that, so does its
periodic refresh), and about the tracked ones only once it tracks any; a send to a topic it had not heard of
tracks that one, and the next refresh dropped every topic known only from the full fetch. A batch already waiting
for such a topic then found no leader until it expired. Here on a real broker: a full fetch, then a topic the
producer never heard of, then one send to a known topic and one to the new one; both must land."""

from __future__ import annotations

import asyncio

import pytest

from config.settings import Settings
from eventlog.publisher import EventPublisher
from schemas.envelope import encode
from schemas.events import RecipientSent
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
