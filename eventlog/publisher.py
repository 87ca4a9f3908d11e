"""Produces our events to Kafka: idempotent, acks=all, never awaiting each send on the hot path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from functools import lru_cache, partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from config.settings import Settings
from eventlog.broker_ping import ask_metadata
from eventlog.kept_topics import KeptTopics
from eventlog.topics import MAX_MESSAGE_BYTES, public_topics
from resilience.dependencies import DEPENDENCIES, Dependencies
from resilience.reasons import reason
from schemas.envelope import Record, encode
from schemas.events import Event

log = logging.getLogger(__name__)

# Its name in the process's dependency record (health, /metrics): lost while a producer that failed a delivery is
# still the one in use, back once a new producer has taken over; its losses count the producers replaced.
DELIVERY = "kafka-delivery"


class BrokerUnavailable(Exception):
    """Kafka did not acknowledge an event within the publisher's ``ack_timeout`` (the API's bound)."""


@lru_cache(maxsize=4096)
def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2, as in the Java client), so we know where a key lands.

    aiokafka's murmur2 is pure Python (~5 µs for a job id); every outcome of a batch asks for the same key, so
    the answers are kept."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


class EventPublisher:
    """One producer for every public event a process emits.

    Outcomes are produced with an explicit partition so a batch can later find its own recorded outcomes
    (see ``streams.agents.batches``); everything else uses the key's default partition.
    """

    def __init__(self, settings: Settings, *, source: str, ack_timeout: float | None = None,
                 dependencies: Dependencies = DEPENDENCIES) -> None:
        self._settings = settings
        self._source = source
        # None: wait as long as the producer retries (the worker); a number: raise BrokerUnavailable after that
        # many seconds, so an HTTP request answers 503 instead of hanging while the broker is gone (the API).
        self._ack_timeout = ack_timeout
        self._partitions = {spec.name: spec.partitions for spec in public_topics(settings)}
        self._producer: AIOKafkaProducer | None = None
        # Why the producer must be replaced before its next send: it failed a delivery (see _spoiled).
        self._spoiled_by: BaseException | None = None
        self.replacements = 0  # producers replaced after a failed delivery, since start
        self._dependencies = dependencies
        dependencies.track(DELIVERY)
        self._retiring: set[asyncio.Task[None]] = set()  # replaced producers still closing
        self._kept = KeptTopics()  # the topics the producer in use keeps in its metadata (eventlog.kept_topics)
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self._producer is not None and self._spoiled_by is not None:
                spoiled, why = self._producer, self._spoiled_by
                self._producer, self._spoiled_by = None, None
                self.replacements += 1
                log.warning("the event producer failed a delivery (%s); a new producer takes over, and the events "
                            "it did not deliver fail to their senders", reason(why))
                # Closed meanwhile: its stop waits for the batches it still holds (up to the request timeout each)
                # to be delivered or fail, and sends need not wait for that.
                retiring = asyncio.create_task(_close_quietly(spoiled, timeout=None))
                self._retiring.add(retiring)
                retiring.add_done_callback(self._retiring.discard)
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                acks="all",
                enable_idempotence=True,  # a retried produce never duplicates an outcome
                # Outcomes arrive one by one as providers answer; 20 ms gathers them into fewer, fuller
                # requests (measured: -45 % projector and -25 % broker CPU vs 5 ms) for 20 ms more latency.
                linger_ms=20,
                max_batch_size=1024 * 1024,
                max_request_size=MAX_MESSAGE_BYTES,
                request_timeout_ms=30000,
                # Batches of similar JSON compress ~5-10x; lz4 costs the least CPU.
                compression_type=None if (codec := self._settings.kafka_compression) == "none" else codec,
            )
            try:
                await producer.start()
            except BaseException:
                # A start that failed or was cancelled half-way leaves the client's connections and its metadata
                # task behind; close them, or every failed start while the broker is down leaks one more.
                await asyncio.shield(_close_quietly(producer))
                raise
            self._producer = producer
            self._dependencies.restored(DELIVERY)  # counted as a reconnect only after a loss

    async def learn(self, short_topics: Iterable[str]) -> None:
        """Have the producer know these topics' partitions before its first event to each (starting it if need
        be). The first send to a topic the producer has not heard of waits for a metadata refresh: the first
        outcomes of a worker's first job waited up to 0.8 s, and every SMTP session with them."""
        await self.start()
        producer = self._producer
        assert producer is not None
        for short in short_topics:
            name = self.topic_name(short)
            self._kept.keep(producer, name)
            await producer.partitions_for(name)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._retiring:
            _, left = await asyncio.wait(self._retiring, timeout=10)
            for task in left:
                task.cancel()

    def topic_name(self, short: str) -> str:
        return self._settings.topic(short)

    def partition_of(self, short_topic: str, key: bytes) -> int:
        return partition_for(key, self._partitions[short_topic])

    async def send(self, event: Event) -> asyncio.Future[Any]:
        """Hand the event to the producer; the returned future resolves once the broker has it (acks=all)."""
        return await self.send_record(encode(event, source=self._source))

    async def send_record(self, record: Record, *, topic: str | None = None) -> asyncio.Future[Any]:
        partition = self.partition_of(record.topic, record.key) if record.topic in self._partitions else None
        for attempt in (1, 2):
            if self._producer is None or self._spoiled_by is not None:
                await self.start()
            producer = self._producer
            assert producer is not None
            name = topic or self.topic_name(record.topic)
            self._kept.keep(producer, name)
            try:
                sent: asyncio.Future[Any] = await producer.send(
                    name,
                    value=record.value,
                    key=record.key,
                    partition=partition,
                    headers=record.headers,
                )
            except KafkaError as exc:
                # A producer whose sender died (its sequence refused, say) refuses every send from then on: once
                # more on a new one.
                self._spoiled(producer, exc)
                if attempt == 2:
                    raise
                continue
            sent.add_done_callback(partial(self._delivered, producer))
            return sent
        raise AssertionError("unreachable")

    def _delivered(self, producer: AIOKafkaProducer, done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and (exc := done.exception()) is not None:
            self._spoiled(producer, exc)

    def _spoiled(self, producer: AIOKafkaProducer, exc: BaseException) -> None:
        """Have ``producer`` replaced before the next send, if it is still the one in use: it failed a delivery.

        An idempotent producer numbers each partition's records as it batches them, and the broker takes a
        partition's records only in that order. A batch that fails (one that waited out the request timeout for a
        partition without a leader: a single broker restarted leaves its partitions leaderless until it is
        elected again, ~30 s in tests/faults) leaves a gap, and the broker refuses every later record for that
        partition (OutOfOrderSequenceNumber), whereupon aiokafka's sender stops and the producer refuses every
        send. A new producer gets a new producer id, whose numbering starts afresh."""
        if producer is self._producer and self._spoiled_by is None:
            self._spoiled_by = exc
            self._dependencies.lost(DELIVERY, f"a delivery failed ({reason(exc)}); a new producer takes over at the "
                                              "next send or health check", recheck=self._take_over)

    async def _take_over(self) -> None:
        """Have a new producer take over from one that failed a delivery now, not at the next send: an idle process
        would otherwise stay degraded (asked by the worker's and projector's dependency rechecks; the API's health
        check does it through :meth:`ping`). Raises while no producer can start."""
        if self._producer is not None and self._spoiled_by is not None:
            await self.start()

    async def ping(self, timeout: float) -> None:
        """Raise unless a broker answers a metadata request within ``timeout`` seconds (health checks). A producer
        that failed a delivery is replaced first, so an idle API does not stay degraded until its next request."""
        if self._producer is None or self._spoiled_by is not None:
            await asyncio.wait_for(self.start(), timeout)
        assert self._producer is not None
        await ask_metadata(self._producer.client, timeout)  # the producer's own connections: what hand-off uses

    async def flush(self) -> None:
        """Until the broker has every event handed to the producer so far (aiokafka's flush does not cut a
        lingering batch short: it waits for it, as for every other)."""
        if self._producer is not None:
            await self._producer.flush()

    async def send_and_wait(self, event: Event) -> None:
        async def acknowledged() -> None:
            future = await self.send(event)
            await self.flush()
            await asyncio.shield(future)  # cancelled waiting must not cancel the delivery itself

        if self._ack_timeout is None:
            await acknowledged()
            return
        try:
            await asyncio.wait_for(acknowledged(), self._ack_timeout)
        except (TimeoutError, KafkaError) as exc:
            raise BrokerUnavailable(f"Kafka did not acknowledge within {self._ack_timeout:.0f} s "
                                    f"({type(exc).__name__})") from exc

    async def send_all(self, events: Iterable[Event]) -> list[tuple[int, int]]:
        """Send many, wait until the broker has every one; (partition, offset) of each, in order."""
        futures = [await self.send(event) for event in events]
        await self.flush()
        metadata = await asyncio.gather(*futures) if futures else []
        return [(m.partition, m.offset) for m in metadata]


async def _close_quietly(producer: AIOKafkaProducer, timeout: float | None = 10.0) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except Exception as exc:  # a producer half-started, or replaced: nothing to save, say what happened
        log.debug("closing a half-started or replaced Kafka producer: %r", exc)

