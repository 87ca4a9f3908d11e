"""The worker's poll against a real broker and aiokafka's real fetcher (streams.guarded_poll): what aiokafka does
when Faust's live set of active partitions is emptied while a poll waits (a rebalance: Faust's flow stops too),
and that the guarded poll takes nothing then, and otherwise what Faust's own poll took."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.guarded_poll import poll
from tests.support.topics import create_topic

pytestmark = pytest.mark.integration


async def _topic_with_records(bootstrap: str, per_partition: int) -> tuple[TopicPartition, TopicPartition]:
    topic = f"guarded-poll-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic, 2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition in (0, 1):
            for i in range(per_partition):
                await producer.send(topic, b"x" * 100, key=str(i).encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    return TopicPartition(topic, 0), TopicPartition(topic, 1)


async def _consumer_holding_records(bootstrap: str, tps: tuple[TopicPartition, ...]) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    consumer.assign(list(tps))
    for tp in tps:
        consumer.seek(tp, 0)
    fetcher = consumer._fetcher
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:  # until the fetcher holds every partition's records
        if all(tp in fetcher._records for tp in tps):  # (fetched, not yet handed over)
            return consumer
        await asyncio.sleep(0.05)
    raise AssertionError("the fetcher never held the records")


def test_aiokafka_hands_over_every_partition_when_the_live_set_is_emptied_mid_wait(settings_factory):
    bootstrap = settings_factory().kafka_bootstrap_servers

    async def run() -> None:
        tps = await _topic_with_records(bootstrap, 5)
        consumer = await _consumer_holding_records(bootstrap, tps)
        try:
            live: set[TopicPartition] = set()  # Faust's set after pause_partitions(assigned) in a rebalance
            drained = await consumer._fetcher.fetched_records(live, timeout=0)
            assert set(drained) == set(tps)  # an empty set means every partition to aiokafka
            assert [await consumer.position(tp) for tp in tps] == [5, 5]  # and the positions moved past them
        finally:
            await consumer.stop()

    asyncio.run(run())


def test_the_guarded_poll_takes_nothing_while_the_flow_is_stopped(settings_factory):
    bootstrap = settings_factory().kafka_bootstrap_servers

    async def run() -> None:
        tps = await _topic_with_records(bootstrap, 5)
        consumer = await _consumer_holding_records(bootstrap, tps)
        fetcher = consumer._fetcher
        try:
            assert await poll(fetcher, set(), lambda: False, timeout=0.3, max_records=None) == {}
            assert await poll(fetcher, set(tps), lambda: False, timeout=0.3, max_records=None) == {}
            assert [await consumer.position(tp) for tp in tps] == [0, 0]  # nothing moved: nothing lost
            first = await poll(fetcher, {tps[0]}, lambda: True, timeout=1.0, max_records=None)
            assert set(first) == {tps[0]} and len(first[tps[0]]) == 5
            assert [await consumer.position(tp) for tp in tps] == [5, 0]
            # Flow running, no partition active: nothing is taken either (aiokafka would hand over every partition).
            assert await poll(fetcher, set(), lambda: True, timeout=0.3, max_records=None) == {}
            assert [await consumer.position(tp) for tp in tps] == [5, 0]
            rest = await poll(fetcher, {tps[1]}, lambda: True, timeout=1.0, max_records=None)
            assert set(rest) == {tps[1]} and len(rest[tps[1]]) == 5
        finally:
            await consumer.stop()

    asyncio.run(run())


def test_a_poll_waiting_when_the_set_is_emptied_takes_nothing(settings_factory):
    """The race of the CI stall, made certain: the poll waits on a partition with nothing new, a rebalance empties
    Faust's set and stops its flow, then records arrive on another partition (recovery's, just sought)."""
    bootstrap = settings_factory().kafka_bootstrap_servers

    async def run() -> None:
        tps = await _topic_with_records(bootstrap, 0)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        consumer.assign(list(tps))
        for tp in tps:
            consumer.seek(tp, 0)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            # Unguarded; guarded with the flow stopped (a rebalance); guarded with the flow running (the set emptied
            # all the same, as it was once recovery paused its changelogs and before the streams were resumed).
            for guarded, stops_flow in ((False, True), (True, True), (True, False)):
                live = {tps[1]}
                flow = [True]
                start = await consumer.position(tps[0])
                if guarded:
                    waiting = asyncio.ensure_future(poll(consumer._fetcher, live, lambda f=flow: f[0], timeout=30.0,
                                                         max_records=None))
                else:
                    waiting = asyncio.ensure_future(consumer._fetcher.fetched_records(live, timeout=30.0))
                await asyncio.sleep(0.3)
                live.clear()  # the rebalance: on_partitions_revoked, pause_partitions(assigned)
                flow[0] = not stops_flow  # stop_flow(), until recovery's resume_flow()
                await producer.send_and_wait(tps[0].topic, b"changelog", partition=0)
                drained = await waiting
                moved = await consumer.position(tps[0]) - start
                if guarded:
                    assert (drained, moved) == ({}, 0)  # still there for the next poll (recovery's)
                else:
                    assert set(drained) == {tps[0]} and moved == 1  # taken past, for Faust to drop
        finally:
            await producer.stop()
            await consumer.stop()

    asyncio.run(run())


def test_until_a_rebalance_ends_only_changelog_records_are_taken(settings_factory):
    """At the end of a rebalance Faust resumes the stream partitions, then seeks them to their committed offsets,
    then ends the rebalance: stream records taken before that were never served (streams.guarded_poll). Recovery's
    changelog records must still come."""
    bootstrap = settings_factory().kafka_bootstrap_servers

    async def run() -> None:
        stream_tp, _ = await _topic_with_records(bootstrap, 5)
        changelog_tp, _ = await _topic_with_records(bootstrap, 5)
        consumer = await _consumer_holding_records(bootstrap, (stream_tp, changelog_tp))
        both = {stream_tp, changelog_tp}
        try:
            taken = await poll(consumer._fetcher, both, lambda: True, timeout=1.0, max_records=None,
                               streams_ready=lambda: False, changelogs={changelog_tp.topic})
            assert set(taken) == {changelog_tp} and len(taken[changelog_tp]) == 5
            assert await consumer.position(stream_tp) == 0  # the stream's records are still there for later
            taken = await poll(consumer._fetcher, both, lambda: True, timeout=1.0, max_records=None,
                               streams_ready=lambda: True, changelogs={changelog_tp.topic})
            assert set(taken) == {stream_tp} and len(taken[stream_tp]) == 5
        finally:
            await consumer.stop()

    asyncio.run(run())
