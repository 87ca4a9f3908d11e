"""Where Faust mends records it dropped, by seeking back to committed offsets, a stream partition that never
committed one goes back to its beginning (streams.transport.seek_to_committed), against a real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streams.transport import seek_to_committed
from tests.support.topics import create_topic

pytestmark = pytest.mark.integration


def test_a_stream_partition_without_a_committed_offset_is_sought_back_to_its_beginning(settings_factory):
    settings = settings_factory()
    bootstrap = settings.kafka_bootstrap_servers
    stream, changelog = f"{settings.topic_prefix}batches", f"{settings.app_id}-batch-progress-changelog"

    async def run() -> None:
        for topic in (stream, changelog):
            await create_topic(bootstrap, topic, 2)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for topic in (stream, changelog):
                for partition in (0, 1):
                    for _ in range(5):
                        await producer.send(topic, b"x", partition=partition)
            await producer.flush()
        finally:
            await producer.stop()
        tps = [TopicPartition(topic, p) for topic in (stream, changelog) for p in (0, 1)]
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=settings.app_id, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.commit({tps[1]: OffsetAndMetadata(3, "")})  # stream partition 1 committed up to 3
            for tp in tps:  # every position past its records, as after a poll whose records Faust dropped
                consumer.seek(tp, 5)
            committed = await seek_to_committed(consumer, {changelog})
            assert committed == {tps[0]: None, tps[1]: 3, tps[2]: None, tps[3]: None}
            # Stream partition 0 had no committed offset: back to its beginning (aiokafka alone left it at 5).
            # Partition 1 back to its committed offset; the changelog's partitions are recovery's to seek.
            assert [await consumer.position(tp) for tp in tps] == [0, 3, 5, 5]
        finally:
            await consumer.stop()

    asyncio.run(run())
