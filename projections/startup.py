"""A projector's start-up: its consumer, and its Kafka side and its Postgres side made ready at once.

Neither side needs the other until the partitions are positioned at the offsets stored in Postgres: the consumer
starts, finds the partitions and their first (and, catching up, end) offsets while the connection is opened, the
read models are created and the stored offsets read. One after the other, a replay of 50,503 events spent
0.1-0.14 s of its ~1.1 s before its first record (bench/replay.py), 30-58 ms of it creating the read models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from config.settings import Settings
from eventlog.topics import partitions_of

A = TypeVar("A")
B = TypeVar("B")

# The live projector's fetch per partition (1 MiB per fetch): a large job's BatchDispatched arrive in one burst
# when it is cut (~100 MB for 1,000,000 learners), and aiokafka's read-ahead of 4 MiB per batches partition
# made its peak memory grow with the job (docs/scaling.md).
LIVE_FETCH_BYTES = 256 * 1024


def new_consumer(settings: Settings, *, catching_up: bool) -> AIOKafkaConsumer:
    """The projector's consumer (not started): no group, offsets kept in Postgres beside the rows, committed
    records only; its fetches sized for catching up (a replay) or for keeping pace with the workers."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        # Fetched in steps of 4 MiB per partition (a larger record still comes whole): with the largest
        # record's size (32 MiB) one fetch took a replay's whole outcomes partition before the first record
        # could be decoded, and a backlog's batches would wait in the consumer's buffer at up to 32 MiB per
        # partition (see Projector._hold_batches). 1 MiB (~3,000 outcomes) cut polls short of max_records.
        max_partition_fetch_bytes=4 * 1024 * 1024 if catching_up else LIVE_FETCH_BYTES,
        fetch_max_bytes=16 * 1024 * 1024 if catching_up else 4 * LIVE_FETCH_BYTES,
        # Outcomes trickle in one by one while a job sends; without a minimum each poll brought a handful
        # of events and cost its own transaction. Waiting up to 100 ms for 64 KiB cut the projector's CPU
        # per 20,000-recipient job from ~5.2 s to ~1.4 s (bench/email_job.py), for <= 100 ms more lag. A
        # transaction still costs more than the ~165 outcomes it then carried (1,500/s): up to 250 ms for
        # 256 KiB took the CPU per outcome from 30-36 µs to 22-27 µs (bench/projector_steady.py, three
        # pairs run alternately).
        # Catching up (a replay), the log is all there: the consumer has one fetch in flight at a time, and
        # one that waited for more of a topic's last records (or of the empty topics) held back the next
        # fetch of the others by up to that wait (bench/replay.py: 0.2 s each time a topic ran out).
        fetch_min_bytes=1 if catching_up else 256 * 1024,
        fetch_max_wait_ms=10 if catching_up else 250,
    )


@dataclass(frozen=True, slots=True)
class Partitions:
    """What the consumer found: the partitions to read, the first offset each still holds and, catching up,
    the end it stops at."""

    partitions: list[TopicPartition]
    beginnings: dict[TopicPartition, int]
    ends: dict[TopicPartition, int] | None


async def find_partitions(consumer: AIOKafkaConsumer, topics: list[str], *, ends: bool) -> Partitions:
    """The partitions of ``topics`` (full names) on a started consumer, with their offsets (both lookups at once).

    A topic that does not exist is an error: topics are created on purpose (`offload topics create`)."""
    partitions: list[TopicPartition] = []
    for name in topics:
        found = await partitions_of(consumer, name)  # topics may be created moments after we start
        if not found:
            raise RuntimeError(f"topic {name} does not exist: run `offload topics create` first")
        partitions.extend(TopicPartition(name, p) for p in found)
    if not ends:
        return Partitions(partitions, await consumer.beginning_offsets(partitions), None)
    beginnings, last = await asyncio.gather(consumer.beginning_offsets(partitions), consumer.end_offsets(partitions))
    return Partitions(partitions, beginnings, last)


async def both(first: Awaitable[A], second: Awaitable[B], *,
               discard: Callable[[A], Awaitable[None]]) -> tuple[A, B]:
    """``first`` and ``second`` run at once, and both results.

    When either fails, or the caller is cancelled, the other is cancelled, both have ended before the error goes
    on, and a result of ``first`` that will not be used (an open connection) is handed to ``discard``: nothing
    started here outlives the error."""
    a, b = asyncio.ensure_future(first), asyncio.ensure_future(second)
    try:
        await asyncio.gather(a, b)
    except BaseException:
        for task in (a, b):
            task.cancel()
        await asyncio.wait((a, b))
        for task in (a, b):
            if not task.cancelled():
                task.exception()  # retrieved: the error that goes on is gather's
        if not a.cancelled() and a.exception() is None:
            await discard(a.result())
        raise
    return a.result(), b.result()
