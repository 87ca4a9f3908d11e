"""``GET /metrics``: Prometheus exposition through ``prometheus_client``, with one custom collector that reads
its figures at scrape time (nothing is counted in this process between scrapes).

* ``offload_jobs{status,type}``: jobs per status, from the ``jobs`` read model.
* ``offload_recipients_total{route,provider,outcome}``: recipients sent/failed, summed from the jobs' counters.
  These are totals: per-second rates come from Prometheus, e.g.
  ``sum by (route, provider) (rate(offload_recipients_total{outcome="sent"}[5m]))``.
  A retry puts a job's failed recipients back to pending, so the ``failed`` series may step down; rate()
  treats that as a counter reset, so alert on ``increase()`` over windows, not on a single sample.
* ``offload_consumer_lag{agent,group,topic}``: records not yet consumed, summed over partitions: the worker's
  Faust consumer group (``settings.app_id``, committed offsets from Kafka; agent="worker") and the projector
  (``projection_offsets`` in Postgres; agent="projector", group="projector:read-models").
* ``offload_callbacks_total{outcome}`` (succeeded / failed / pending, from the ``callbacks`` read model) and
  ``offload_callback_success_ratio``.
* ``offload_metrics_source_up{source}``: 1 when Postgres / Kafka answered this scrape, 0 otherwise.

Postgres and Kafka are read at most once a second however often /metrics is hit. With ``metrics_token`` set,
or whenever ``metrics_require_token`` is on (default in production), only ``Authorization: Bearer <token>``
gets an answer; the output holds no company id, job id, address or secret.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.state import STATE, ApiState
from resilience.dependencies import snapshot as dependencies_snapshot
from resilience.probe import bearer_authorised, dependency_metrics

log = logging.getLogger(__name__)

KAFKA_TIMEOUT = 5.0
PROJECTION = "read-models"  # projections.projector.PROJECTION
MIN_INTERVAL = 1.0  # seconds: Prometheus scrapes every 15-60 s; anything faster gets the same reading
CALLBACK_OUTCOMES = {"delivered": "succeeded", "gave_up": "failed", "retrying": "pending"}


class KafkaOffsets:
    """One admin client and one group-less consumer, opened on first use and kept for later scrapes."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin: AIOKafkaAdminClient | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def _open(self) -> None:
        if self.admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            await admin.start()
            self.admin = admin
        if self.consumer is None:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                        request_timeout_ms=5000)
            await consumer.start()
            self.consumer = consumer

    async def group_offsets(self, group: str) -> dict[TopicPartition, int]:
        async with self._lock:
            await self._open()
            assert self.admin is not None
            found = await self.admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        async with self._lock:
            await self._open()
            assert self.consumer is not None
            return await self.consumer.end_offsets(partitions)

    async def close(self) -> None:
        for client in (self.consumer, self.admin):
            if client is not None:
                closing = client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop()
                try:  # bounded: a client in the middle of a metadata read must not hold up shutdown
                    await asyncio.wait_for(closing, 10.0)
                except Exception:
                    log.debug("closing a Kafka client failed", exc_info=True)
        self.admin = self.consumer = None


@dataclass
class Reading:
    """The figures of one scrape, as read from Postgres and Kafka."""

    postgres_up: bool = False
    kafka_up: bool = False
    jobs: list[dict] = field(default_factory=list)
    outcomes: list[dict] = field(default_factory=list)
    callbacks: dict[str, int] = field(default_factory=dict)
    lag: list[tuple[str, str, str, int]] = field(default_factory=list)  # agent, group, topic, records
    seconds: float = 0.0


class OffloadCollector(Collector):
    """Yields the metric families of the latest reading; ``refresh()`` takes a new one at scrape time."""

    def __init__(self, state: ApiState, kafka: KafkaOffsets) -> None:
        self.state = state
        self.kafka = kafka
        self.reading = Reading()
        self.read_at: float | None = None
        self.reads = 0
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        started = time.perf_counter()
        reading = Reading()
        projector = await _from_postgres(self.state, reading)
        await _consumer_lag(self.state, self.kafka, projector, reading)
        reading.seconds = round(time.perf_counter() - started, 4)
        self.reading = reading

    async def scrape(self, registry: CollectorRegistry) -> bytes:
        """The exposition, from a reading at most MIN_INTERVAL old: however often /metrics is hit, Postgres and
        Kafka are read at most once per MIN_INTERVAL (scrapes arriving together wait for one read)."""
        async with self._lock:
            if self.read_at is None or time.monotonic() - self.read_at >= MIN_INTERVAL:
                await self.refresh()
                self.read_at = time.monotonic()
                self.reads += 1
            return generate_latest(registry)

    def collect(self) -> Iterator[Metric]:
        r = self.reading
        if r.postgres_up:
            jobs = GaugeMetricFamily("offload_jobs", "jobs in the read model by status and type",
                                     labels=["status", "type"])
            for row in r.jobs:
                jobs.add_metric([row["status"], row["type"]], row["n"])
            yield jobs
            outcomes = CounterMetricFamily(
                "offload_recipients", "recipients with an outcome, by route, provider and outcome (sent includes "
                "certificates issued); use rate() for per-second figures", labels=["route", "provider", "outcome"])
            for row in r.outcomes:
                outcomes.add_metric([row["route"], row["provider"], "sent"], row["sent"] or 0)
                outcomes.add_metric([row["route"], row["provider"], "failed"], row["failed"] or 0)
            yield outcomes
            callbacks = CounterMetricFamily("offload_callbacks", "callbacks to Moodle by outcome", labels=["outcome"])
            for outcome in ("succeeded", "failed", "pending"):
                callbacks.add_metric([outcome], r.callbacks.get(outcome, 0))
            yield callbacks
            # Counts by outcome from a GROUP BY: an outcome that never happened has no row, a real 0.
            done = r.callbacks.get("succeeded", 0) + r.callbacks.get("failed", 0)
            yield GaugeMetricFamily("offload_callback_success_ratio", "succeeded / (succeeded + failed) callbacks",
                                    value=r.callbacks.get("succeeded", 0) / done if done else 1.0)
        if r.kafka_up:
            lag = GaugeMetricFamily("offload_consumer_lag",
                                    "records in the topic not yet consumed by the group, summed over partitions",
                                    labels=["agent", "group", "topic"])
            for agent, group, topic, records in r.lag:
                lag.add_metric([agent, group, topic], records)
            yield lag
        up = GaugeMetricFamily("offload_metrics_source_up", "1 when the source answered this scrape",
                               labels=["source"])
        up.add_metric(["postgres"], int(r.postgres_up))
        up.add_metric(["kafka"], int(r.kafka_up))
        yield up
        yield GaugeMetricFamily("offload_metrics_scrape_seconds", "time taken to gather these metrics",
                                value=r.seconds)
        yield from dependency_metrics(dependencies_snapshot())


KAFKA = web.AppKey("metrics_kafka", KafkaOffsets)
COLLECTOR = web.AppKey("metrics_collector", OffloadCollector)
REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


def setup(app: web.Application) -> None:
    state = app[STATE]
    app[KAFKA] = KafkaOffsets(state.settings.kafka_bootstrap_servers)
    app[COLLECTOR] = OffloadCollector(state, app[KAFKA])
    app[REGISTRY] = CollectorRegistry(auto_describe=False)
    app[REGISTRY].register(app[COLLECTOR])
    if state.settings.metrics_token_required and state.settings.metrics_token is None:
        log.warning("/metrics requires a bearer token (metrics_require_token, on in production) but "
                    "OFFLOAD_METRICS_TOKEN is not set: every scrape will be refused")
    app.router.add_get("/metrics", metrics)
    app.on_cleanup.append(_close)


async def _close(app: web.Application) -> None:
    await app[KAFKA].close()


def _authorised(request: web.Request, state: ApiState) -> bool:
    token = state.settings.metrics_token
    return bearer_authorised(request.headers.get("Authorization", ""),
                             None if token is None else token.get_secret_value(), state.settings.metrics_token_required)


async def metrics(request: web.Request) -> web.Response:
    state: ApiState = request.app[STATE]
    if not _authorised(request, state):
        return web.Response(status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"})
    body = await request.app[COLLECTOR].scrape(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _from_postgres(state: ApiState, reading: Reading) -> dict[TopicPartition, int]:
    try:
        found = await state.store.metrics(PROJECTION)
    except (psycopg.Error, OSError, TimeoutError) as exc:
        log.warning("/metrics: Postgres unavailable: %s", exc)
        return {}
    reading.postgres_up = True
    reading.jobs, reading.outcomes = found["jobs"], found["outcomes"]
    counts: dict[str, int] = defaultdict(int)
    for row in found["callbacks"]:
        counts[CALLBACK_OUTCOMES.get(row["status"], "pending")] += row["n"]
    reading.callbacks = dict(counts)
    return {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in found["projector"]}


async def _consumer_lag(state: ApiState, kafka: KafkaOffsets, projector: dict[TopicPartition, int],
                        reading: Reading) -> None:
    settings = state.settings
    group = settings.app_id
    try:
        committed = await asyncio.wait_for(kafka.group_offsets(group), KAFKA_TIMEOUT)
        # Only the public topics: Faust's own changelog/repartition topics would only add noise.
        worker = {tp: off for tp, off in committed.items() if tp.topic.startswith(settings.topic_prefix)}
        ends = await asyncio.wait_for(kafka.end_offsets(sorted({*worker, *projector})), KAFKA_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any broker trouble: report the source down, keep serving
        log.warning("/metrics: Kafka offsets unavailable: %s", exc)
        await kafka.close()  # reconnect on the next scrape
        return
    reading.kafka_up = True
    for agent, label, positions in (("worker", group, worker), ("projector", f"projector:{PROJECTION}", projector)):
        per_topic: dict[str, int] = defaultdict(int)
        for tp, offset in positions.items():
            per_topic[tp.topic] += max(ends.get(tp, offset) - offset, 0)
        for topic in sorted(per_topic):
            reading.lag.append((agent, label, topic, per_topic[topic]))
