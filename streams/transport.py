"""The worker's Kafka transport: Faust's aiokafka driver, whose consumer fetches in fewer, fuller requests.

Faust builds its consumer with ``fetch_max_wait_ms=1500`` fixed and aiokafka's ``fetch_min_bytes=1``, and offers
no setting for either. One fetch request asks the broker for every partition the worker holds (job requests,
batches, jobs, outcomes, the global tables' changelogs: ~40 on the default topics), so with ``fetch_min_bytes=1``
the broker answers as soon as any one record lands anywhere. During a job that is every linger of the outcome
producer: the worker re-reads its own outcomes (watch-delivery) in many small fetches, and each fetch costs its
request, a response listing every partition, and a hop between Faust's consumer thread and the event loop.

Here the broker holds a fetch until ``FETCH_MIN_BYTES`` have gathered over the partitions asked for, or at most
``FETCH_MAX_WAIT_MS``. Where records are waiting (a job's ``BatchDispatched`` cut ahead, its chunks) the fetch
fills at once and nothing waits; what does wait is a record that arrives alone on a quiet log: a new job's
``JobRequested``, a pause or cancel, the ``BatchCompleted`` that ends a job, each up to ``FETCH_MAX_WAIT_MS`` more
(docs/benchmarks.md has what it saved). Idle, the worker polls every ``FETCH_MAX_WAIT_MS`` instead of 1.5 s.

Each poll goes through :func:`streams.guarded_poll.poll`, which never drains records past a rebalance. Where Faust
mends records it dropped by seeking its partitions back to their committed offsets (after every rebalance, and in a
poll made while its flow is stopped), a stream partition that has never committed one is sought back to its
beginning (:func:`seek_to_committed`): aiokafka seeks only partitions that have one, and would leave such a
partition's position past the records Faust had dropped, never to be served.

Each record goes to Faust's callback without the four tasks per record of Faust's own drain loop, when the callback
does not wait (:mod:`streams.first_inline`).

On a rebalance the consumer waits only for records a stream still works on: records Faust dropped from the agents'
buffers are not waited for (:mod:`streams.held_events` has the wait that otherwise never ends), and while it waits
the streams are asked to give up records that cannot end soon (:func:`held_events`).

Faust's producer (the tables' changelogs) keeps each topic in its metadata from its first send on
(:mod:`eventlog.kept_topics`): otherwise a refresh could drop a changelog with a batch waiting for it, which would
wait out Faust's 1,200 s request timeout and hold up the worker's commits as long.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, ClassVar, cast

import aiokafka
import faust
from aiokafka.errors import ConsumerStoppedError
from faust.transport.drivers import aiokafka as faust_aiokafka

from eventlog.kept_topics import KeptTopics
from streams import first_inline
from streams.guarded_poll import poll
from streams.held_events import HeldEvents, release_orphans

FETCH_MIN_BYTES = 64 * 1024
FETCH_MAX_WAIT_MS = 100


async def seek_to_committed(consumer: aiokafka.AIOKafkaConsumer, changelogs: Collection[str]) -> Mapping[Any, Any]:
    """Every assigned partition back to its committed offset, and a stream partition that has none (no offset, or
    0) back to its beginning, where it starts without one (Faust's ``consumer_auto_offset_reset``, "earliest",
    which streams.app sets). Changelog partitions have no committed offset: Faust's recovery seeks them."""
    committed: Mapping[Any, Any] = await consumer.seek_to_committed()
    never = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
    if never:
        await consumer.seek_to_beginning(*never)
    return committed


class _FullerFetchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes fetch_max_wait_ms=1500 itself, so neither can go through its settings; aiokafka keeps the
        # constructor's values in these two attributes until start() builds the fetcher from them (the consumer
        # is not started yet); tests/unit/test_worker_transport.py checks that the fetcher is built with them.
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def _fetch_records(self, consumer: aiokafka.AIOKafkaConsumer, active_partitions: set[Any],
                             timeout: float | None = None, max_records: int | None = None) -> Any:
        # Faust's own hands its live set of active partitions to fetched_records, which drains every partition
        # when a rebalance empties that set mid-wait, for Faust to drop (streams.guarded_poll has the stall).
        if consumer._closed:  # the fetcher's own state is streams.guarded_poll's to read
            raise ConsumerStoppedError()
        fetcher = consumer._fetcher
        flow = self.consumer
        with fetcher._subscriptions.fetch_context():
            return await poll(fetcher, active_partitions, lambda: flow.flow_active, timeout=timeout,
                              max_records=max_records, streams_ready=lambda: not self.app.rebalancing,
                              changelogs=self.app.tables.changelog_topics)

    async def seek_to_committed(self) -> Mapping[Any, Any]:
        return await self.call_thread(seek_to_committed, self._ensure_consumer(), self.app.tables.changelog_topics)


class _FullerFetchConsumer(faust_aiokafka.Consumer):
    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        # Faust's drain loop is the one caller that passes a coroutine (streams.first_inline).
        return await first_inline.wait_first(super().wait_first, lambda: self._stopped.is_set()
                                             or self._crashed.is_set(), coros, timeout)

    def _clean_unacked_messages(self) -> None:
        # Called by wait_empty (a rebalance, a stop) after each second it waited for acks.
        held = cast(FullerFetchTransport, self.transport).held
        held.waited_on()
        super()._clean_unacked_messages()
        release_orphans(self._unacked_messages, held)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _FullerFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _TopicKeepingProducer(faust_aiokafka.Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept = KeptTopics()

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: float | None, headers: Any, *, transactional_id: str | None = None) -> Any:
        self._kept.keep(self._ensure_producer(), topic)
        return await super().send(topic, key, value, partition, timestamp, headers,
                                  transactional_id=transactional_id)


class FullerFetchTransport(faust_aiokafka.Transport):
    Consumer: ClassVar[Any] = _FullerFetchConsumer
    Producer: ClassVar[Any] = _TopicKeepingProducer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held = HeldEvents()
        self.app.sensors.add(self.held)


def use_fuller_fetches(app: faust.App) -> None:
    """Give ``app`` this transport; call before anything asks for its topics, consumer or producer."""
    app.transport = FullerFetchTransport(app.conf.broker_consumer, app)


def held_events(app: faust.App) -> HeldEvents:
    """What ``app``'s streams hold unacked; a stream gives up a record there (``let_go``) so that no rebalance or
    stop waits for it, and is asked to while one waits (``when_waited_on``)."""
    transport = app.transport
    if not isinstance(transport, FullerFetchTransport):
        raise TypeError(f"the app's transport is {type(transport).__name__}, not the worker's (use_fuller_fetches)")
    return transport.held
