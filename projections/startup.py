"""A projector's start-up: its Kafka side and its Postgres side made ready at once.

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

from eventlog.topics import partitions_of

A = TypeVar("A")
B = TypeVar("B")


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
