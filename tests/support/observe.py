"""Reading what the system did: read-model rows from Postgres and decoded events from the topics."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import sql
from psycopg.rows import dict_row

from config.settings import Settings
from eventlog.topics import offsets_of, partitions_of
from projections.projector import PROJECTED_TOPICS, PROJECTION
from schemas.envelope import decode
from schemas.events import Event, JobCompleted, RecipientFailed, RecipientSent

T = TypeVar("T")


def query(settings: Settings, statement: str, params: tuple = ()) -> list[dict[str, Any]]:
    """Rows of a read-model query in the test's projection schema ([] while its tables do not exist yet)."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.projection_schema)))
        try:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(statement, params)
                return cur.fetchall()
        except psycopg.errors.UndefinedTable:
            return []


def wait_for(check: Callable[[], T], *, timeout: float = 60, interval: float = 0.25, what: str = "") -> T:
    """Poll until ``check()`` returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or check}: last value {last!r}")


def log_of(path: Path) -> str:
    """A process's log file as text so far (a line half-written shows as it is)."""
    return path.read_text(errors="replace")


def job_row(settings: Settings, job_id: str) -> dict[str, Any] | None:
    rows = query(settings, "SELECT * FROM jobs WHERE job_id = %s", (job_id,))
    return rows[0] if rows else None


def wait_for_job(settings: Settings, job_id: str, status: str = "completed", timeout: float = 90,
                 run: int = 0) -> dict[str, Any]:
    """The job's read-model row once it has ``status`` as of run ``run`` (a retry run completes the job again:
    waiting for the status alone would return the row as the earlier run left it)."""

    def matches() -> dict[str, Any] | None:
        row = job_row(settings, job_id)
        if not row or row["status"] != status:
            return None
        if run and not query(settings, "SELECT 1 FROM job_runs WHERE job_id = %s AND run = %s "
                             "AND completed_at IS NOT NULL", (job_id, run)):
            return None
        return row

    def check() -> dict[str, Any] | None:
        # The job's status can be projected before the last outcomes that raise its counters (they are on
        # other topics, read in no fixed order): once it shows, let the projector reach the log's end as it
        # is now, which holds every outcome the job's completion waited for, then read the row again.
        if not matches():
            return None
        wait_for_projector(settings, timeout=timeout)
        return matches()

    return wait_for(check, timeout=timeout, what=f"job {job_id} to be {status} after run {run}")


def wait_for_projector(settings: Settings, timeout: float = 90) -> None:
    """Until the projector has applied every record the projected topics hold now (the ends are read once, so
    records produced meanwhile, e.g. a callback retried every few seconds, cannot keep moving the goal)."""
    ends = asyncio.run(offsets_of(settings, PROJECTED_TOPICS, end=True))

    def caught_up() -> bool:
        applied = {(r["topic"], r["partition"]): r["next_offset"] for r in query(
            settings, "SELECT topic, partition, next_offset FROM projection_offsets WHERE projection = %s",
            (PROJECTION,))}
        return all(applied.get(place, 0) >= end for place, end in ends.items())

    wait_for(caught_up, timeout=timeout, what="the projector to reach the end of the log")


async def _read_topic(settings: Settings, short: str) -> list[tuple[Any, Event | Exception]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                                enable_auto_commit=False, max_partition_fetch_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        name = settings.topic(short)
        partitions = [TopicPartition(name, p) for p in await partitions_of(consumer, name)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[tuple[Any, Event | Exception]] = []
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    try:
                        out.append((record, decode(record.value, record.headers)))
                    except Exception as exc:  # tests look at undecodable records too
                        out.append((record, exc))
        return out
    finally:
        await consumer.stop()


def events(settings: Settings, short_topic: str) -> list[Event]:
    """Every decodable event on one of the test's topics, e.g. ``events(s, 'outcomes')``."""
    return [e for _, e in asyncio.run(_read_topic(settings, short_topic)) if isinstance(e, Event)]


def records(settings: Settings, short_topic: str) -> list[tuple[Any, Event | Exception]]:
    return asyncio.run(_read_topic(settings, short_topic))


def counts_explained(settings: Settings, job_id: str) -> str:
    """Where a job's projected counters could have gone wrong, for an assertion's message: its learners' terminal
    outcomes in the log and their rows by status in Postgres, what its JobCompleted said, and every partition the
    projector has not applied to the log's end (a failure in CI leaves only its message to read)."""
    logged = [e for e in events(settings, "outcomes")
              if isinstance(e, RecipientSent | RecipientFailed) and e.job_id == job_id]
    in_log = Counter(type(e).__name__ for e in logged)
    learners = len({e.userid for e in logged})
    rows = {r["status"]: r["n"] for r in query(settings, "SELECT status, count(*) AS n FROM job_recipients "
                                                         "WHERE job_id = %s GROUP BY 1", (job_id,))}
    completed = [(e.run, e.succeeded, e.failed) for e in events(settings, "jobs")
                 if isinstance(e, JobCompleted) and e.job_id == job_id]
    ends = asyncio.run(offsets_of(settings, PROJECTED_TOPICS, end=True))
    applied = {(r["topic"], r["partition"]): r["next_offset"] for r in query(
        settings, "SELECT topic, partition, next_offset FROM projection_offsets WHERE projection = %s",
        (PROJECTION,))}
    behind = {f"{topic}[{partition}]": (applied.get((topic, partition)), end)
              for (topic, partition), end in sorted(ends.items()) if applied.get((topic, partition), 0) != end}
    return (f"log: {dict(in_log)} for {learners} learners; job_recipients: {rows}; JobCompleted (run, succeeded, "
            f"failed): {completed}; partitions where the projector's next offset differs from the log's end "
            f"(next, end): {behind or 'none'}")


# Bookkeeping that says when a row was written, not what happened: the only columns allowed to differ between
# the live read models and a replay of the log.
READ_MODEL_TABLES = {
    "jobs": ("job_id", {"updated_at"}),
    "job_recipients": ("job_id, userid", {"updated_at"}),
    "job_batches": ("job_id, run, batch_no", set()),
    "job_runs": ("job_id, run", set()),
    "company_cloud_settings": ("company_id", set()),
    "audit_log": ('topic, partition, "offset"', {"id"}),
    "suppressions": ("company_id, userid, scope", set()),
}


def read_models(settings: Settings, schema: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the read models in ``schema``, in a fixed order, without the bookkeeping columns."""
    view = settings.model_copy(update={"projection_schema": schema})
    out = {}
    for table, (order, skip) in READ_MODEL_TABLES.items():
        rows = query(view, f"SELECT * FROM {table} ORDER BY {order}")
        out[table] = [{k: v for k, v in row.items() if k not in skip} for row in rows]
    return out
