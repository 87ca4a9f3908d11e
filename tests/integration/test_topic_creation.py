"""Topics made by ``eventlog.topics.create_topics`` take records the moment it returns, against the real broker."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from eventlog.topics import create_topics, partitions_of

pytestmark = pytest.mark.integration


def test_every_new_partition_takes_a_record_without_a_not_leader_refusal(settings_factory, caplog):
    # The broker makes each partition's log after metadata already names it the leader; a producer in between is
    # refused NOT_LEADER_OR_FOLLOWER and aiokafka logs a warning per retry (a newcomer's first `offload demo`
    # showed six). Many partitions make the window wide enough to meet without create_topics' wait.
    settings = settings_factory(job_partitions=24, batch_partitions=24, outcome_partitions=24)
    caplog.set_level(logging.WARNING, logger="aiokafka")

    async def create_and_write() -> int:
        created = await create_topics(settings, with_changelogs=True)
        assert created and set(created.values()) == {"created"}
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
        await consumer.start()
        await producer.start()
        try:
            places = [(name, p) for name in created for p in await partitions_of(consumer, name)]
            sent = await asyncio.gather(*[await producer.send(name, b"{}", key=b"k", partition=p)
                                          for name, p in places])
        finally:
            await producer.stop()
            await consumer.stop()
        assert [(m.topic, m.partition, m.offset) for m in sent] == [(name, p, 0) for name, p in places]
        return len(places)

    assert asyncio.run(create_and_write()) > 150
    refused = [r.getMessage() for r in caplog.records if "NotLeader" in r.getMessage()]
    assert not refused, refused[:3]
