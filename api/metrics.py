"""``GET /metrics``: Prometheus text exposition (format 0.0.4), written by hand (no client library needed).

Everything is read at scrape time:

* ``offload_jobs{status,type}``: jobs per status, from the ``jobs`` read model.
* ``offload_recipients_total{route,provider,outcome}``: recipients sent/failed, summed from the jobs' counters.
  These are totals: per-second rates come from Prometheus, e.g.
  ``sum by (route, provider) (rate(offload_recipients_total{outcome="sent"}[5m]))``.
  A retry puts a job's failed recipients back to pending, so the ``failed`` series may step down; rate()
  treats that as a counter reset, so alert on ``increase()`` over windows, not on a single sample.
* ``offload_consumer_lag{agent,group,topic}``: records not yet consumed, summed over partitions: the worker's
  Faust consumer group (``settings.app_id``, committed offsets from Kafka; agent="worker") and the projector
  (``projection_offsets`` in Postgres; agent="projector", group="projector:read-models").
* ``offload_callbacks_total{outcome}`` and ``offload_callback_success_ratio``: only when a ``callbacks`` read
  model exists (with a ``status`` column); otherwise not exported.
* ``offload_metrics_source_up{source}``: 1 when Postgres / Kafka answered this scrape, 0 otherwise.

Served to anyone unless ``metrics_token`` is set (then ``Authorization: Bearer <token>``); the output holds no
company id, job id, address or secret.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import defaultdict
from typing import Any

import psycopg
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from psycopg.rows import dict_row

from api.state import STATE, ApiState

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KAFKA_TIMEOUT = 5.0
PROJECTION = "read-models"  # projections.projector.PROJECTION


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
                try:
                    await client.close() if isinstance(client, AIOKafkaAdminClient) else await client.stop()
                except Exception:
                    log.debug("closing a Kafka client failed", exc_info=True)
        self.admin = self.consumer = None


KAFKA = web.AppKey("metrics_kafka", KafkaOffsets)


def setup(app: web.Application) -> None:
    app[KAFKA] = KafkaOffsets(app[STATE].settings.kafka_bootstrap_servers)
    app.router.add_get("/metrics", metrics)
    app.on_cleanup.append(_close)


async def _close(app: web.Application) -> None:
    await app[KAFKA].close()


async def metrics(request: web.Request) -> web.Response:
    state: ApiState = request.app[STATE]
    token = state.settings.metrics_token
    if token is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token.get_secret_value()}".encode()):
            return web.Response(status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"})
    started = time.perf_counter()
    out = Exposition()
    postgres_up, projector = await _from_postgres(state, out)
    kafka_up = await _consumer_lag(state, request.app[KAFKA], projector, out)
    out.family("offload_metrics_source_up", "gauge", "1 when the source answered this scrape")
    out.sample("offload_metrics_source_up", {"source": "postgres"}, int(postgres_up))
    out.sample("offload_metrics_source_up", {"source": "kafka"}, int(kafka_up))
    out.family("offload_metrics_scrape_seconds", "gauge", "time taken to gather these metrics")
    out.sample("offload_metrics_scrape_seconds", {}, round(time.perf_counter() - started, 4))
    return web.Response(body=out.text().encode(), headers={"Content-Type": CONTENT_TYPE})


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: dict[str, Any], value: float) -> None:
        if labels:
            inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{inner}}} {_number(value)}")
        else:
            self.lines.append(f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


async def _rows(conn: psycopg.AsyncConnection, query: str, params: tuple = ()) -> list[dict[str, Any]] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        try:
            await cur.execute(query, params)
        except psycopg.errors.UndefinedTable:
            return None
        return await cur.fetchall()


async def _from_postgres(state: ApiState, out: Exposition) -> tuple[bool, dict[TopicPartition, int]]:
    try:
        async with state.store.pool.connection(timeout=5) as conn:
            jobs = await _rows(conn, "SELECT status, coalesce(type, 'unknown') AS type, count(*) AS n FROM jobs "
                                     "GROUP BY 1, 2 ORDER BY 1, 2") or []
            totals = await _rows(conn, """
                SELECT coalesce(route, 'unknown') AS route, coalesce(provider, 'unknown') AS provider,
                       sum(succeeded)::bigint AS sent, sum(failed)::bigint AS failed
                FROM jobs GROUP BY 1, 2 ORDER BY 1, 2""") or []
            callbacks = await _callbacks(conn)
            projector = await _rows(conn, "SELECT topic, partition, next_offset FROM projection_offsets "
                                          "WHERE projection = %s", (PROJECTION,)) or []
    except (psycopg.Error, OSError, TimeoutError) as exc:
        log.warning("/metrics: Postgres unavailable: %s", exc)
        return False, {}
    out.family("offload_jobs", "gauge", "jobs in the read model by status and type")
    for row in jobs:
        out.sample("offload_jobs", {"status": row["status"], "type": row["type"]}, row["n"])
    out.family("offload_recipients_total", "counter",
               "recipients with an outcome, by route, provider and outcome (sent includes certificates issued); "
               "use rate() for per-second figures")
    for row in totals:
        labels = {"route": row["route"], "provider": row["provider"]}
        out.sample("offload_recipients_total", {**labels, "outcome": "sent"}, row["sent"] or 0)
        out.sample("offload_recipients_total", {**labels, "outcome": "failed"}, row["failed"] or 0)
    if callbacks is not None:
        out.family("offload_callbacks_total", "counter", "callbacks to Moodle by outcome")
        for outcome, n in callbacks.items():
            out.sample("offload_callbacks_total", {"outcome": outcome}, n)
        # Counts by outcome from a GROUP BY: an outcome that never happened has no row, and that is a real 0.
        done = callbacks.get("succeeded", 0) + callbacks.get("failed", 0)
        out.family("offload_callback_success_ratio", "gauge", "succeeded / (succeeded + failed) callbacks")
        out.sample("offload_callback_success_ratio", {}, callbacks.get("succeeded", 0) / done if done else 1.0)
    return True, {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in projector}

_SUCCESS = {"sent", "succeeded", "success", "delivered", "ok", "done"}
_FAILURE = {"failed", "failure", "error", "dead", "gave_up", "abandoned"}


async def _callbacks(conn: psycopg.AsyncConnection) -> dict[str, int] | None:
    """Callback outcomes when some read model records them (a ``callbacks`` table with a ``status``)."""
    found = await _rows(conn, """SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                                 AND table_name = 'callbacks' AND column_name = 'status'""")
    if not found:
        return None
    rows = await _rows(conn, "SELECT status, count(*) AS n FROM callbacks GROUP BY status") or []
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        status = str(row["status"]).lower()
        counts["succeeded" if status in _SUCCESS else "failed" if status in _FAILURE else "pending"] += row["n"]
    return dict(counts)


async def _consumer_lag(state: ApiState, kafka: KafkaOffsets, projector: dict[TopicPartition, int],
                        out: Exposition) -> bool:
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
        return False
    out.family("offload_consumer_lag", "gauge",
               "records in the topic not yet consumed by the group, summed over partitions")
    for agent, label, positions in (("worker", group, worker), ("projector", f"projector:{PROJECTION}", projector)):
        per_topic: dict[str, int] = defaultdict(int)
        for tp, offset in positions.items():
            per_topic[tp.topic] += max(ends.get(tp, offset) - offset, 0)
        for topic in sorted(per_topic):
            out.sample("offload_consumer_lag", {"agent": agent, "group": label, "topic": topic}, per_topic[topic])
    return True
