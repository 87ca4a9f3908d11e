"""Topics made by ``eventlog.topics.create_topics`` take records the moment it returns, against the real broker."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from eventlog.topics import INDEX_BYTES, changelog_topics, create_topics, partitions_of, public_topics

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


def test_every_topic_made_keeps_its_indexes_at_one_mib_and_the_broker_says_so(settings_factory):
    """The broker's own answer, not the spec: a config the broker ignored or renamed would fail here. 1 MiB bounds
    what a new partition's first index write zero-fills in the request thread (eventlog.topics.INDEX_BYTES)."""
    settings = settings_factory()

    async def index_bytes_of_each() -> dict[str, str]:
        created = await create_topics(settings, with_changelogs=True)
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        await admin.start()
        try:
            answers = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in created])
        finally:
            await admin.close()
        found = {}
        for answer in answers:
            for error_code, message, _type, name, entries in answer.resources:
                assert error_code == 0, (name, message)
                found[name] = {entry[0]: entry[1] for entry in entries}["segment.index.bytes"]
        return found

    found = asyncio.run(index_bytes_of_each())
    assert len(found) == len(public_topics(settings)) + len(changelog_topics(settings))
    assert set(found.values()) == {str(INDEX_BYTES)} == {str(1024 * 1024)}
