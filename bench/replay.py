"""Replay speed: the log of one large email job rebuilt into a fresh schema, as ``offload replay`` does it.

Run ``python -m bench.replay [-n 50000]`` with a stack up (``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL``, or
the dev stack, started if need be). It writes the events a worker writes for an ``n``-learner job (JobAccepted,
BatchesDispatched, one BatchDispatched per 200 learners, one outcome per learner with 1 % failures, one
BatchCompleted per batch, JobCompleted) into fresh topics through the project's own encoder, then measures in
the same run:

- ``raw_read_events_per_s``: reading the same records from Kafka and doing nothing with them (the ceiling);
- ``decode_events_per_s``: reading and decoding them into events (what any projector must at least do);
- ``replay_events_per_s``: :func:`offload.replay.replay` from offset 0 into a fresh schema, the whole call
  (start-up included), and ``replay_steady_events_per_s`` from its first record in hand to its last commit;
- the CPU of the replay (this process), of its decoder process (``projections/decoder.py``) and of the Postgres
  server behind ``DATABASE_URL`` (its postmaster's children; every postgres process on the machine if it runs
  elsewhere), per event;

checks the rebuilt read models (every learner's row, the job's counters and status), drops its topics and
schemas, and prints one JSON line last. The log is written here rather than by a real job so that the figure
depends on the projector alone; ``bench.scale`` times replay after real jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import sql

from bench.measure import postgres_cpu_seconds, postmaster_of
from config.settings import Settings
from schemas.events import (
    BatchCompleted,
    BatchDispatched,
    BatchesDispatched,
    Event,
    FailedRecipient,
    JobAccepted,
    JobCompleted,
    Recipient,
    RecipientFailed,
    RecipientSent,
)

BATCH = 200
FAIL_EVERY = 100  # one learner in a hundred fails (a permanent 550), as real jobs have some


def job_log(job_id: str, n: int, *, company_id: int = 7) -> Iterator[Event]:
    """The events of an ``n``-learner local email job, in the order a worker writes them."""
    batches = (n + BATCH - 1) // BATCH
    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    yield JobAccepted(job_id=job_id, type="email", company_id=company_id, route="local",
                      reason="company has no cloud settings", provider="smtp", template_id="course_reminder",
                      total_recipients=n, batch_size=BATCH, batch_count=batches, createdby=2, accepted_at=t0,
                      callback_url="https://moodle.example.org/local/offload/callback.php")
    yield BatchesDispatched(job_id=job_id, locations=[(b % 12, b // 12) for b in range(batches)], dispatched_at=t0)
    data = {"course_name": "Fire Safety 101", "due_date": "2026-12-31",
            "course_url": "https://moodle.example.org/course/view.php?id=7"}
    for b in range(batches):
        users = range(1 + b * BATCH, 1 + min(n, (b + 1) * BATCH))
        yield BatchDispatched(job_id=job_id, batch_no=b, batch_count=batches, type="email", company_id=company_id,
                              route="local", provider="smtp", template_id="course_reminder", template_data=data,
                              recipients=[Recipient(userid=u, email=f"learner{u}@example.org", firstname=f"First{u}",
                                                    lastname=f"Last{u}") for u in users], dispatched_at=t0)
    for b in range(batches):
        users = range(1 + b * BATCH, 1 + min(n, (b + 1) * BATCH))
        when = t0 + timedelta(seconds=b * 0.2)
        failed = []
        for u in users:
            if u % FAIL_EVERY == 0:
                failed.append(FailedRecipient(userid=u, retryable=False))
                yield RecipientFailed(job_id=job_id, batch_no=b, userid=u, email=f"learner{u}@example.org",
                                      provider="smtp", error="550 5.1.1 mailbox unavailable", attempts=1,
                                      retryable=False, failed_at=when)
            else:
                yield RecipientSent(job_id=job_id, batch_no=b, userid=u, email=f"learner{u}@example.org",
                                    provider="smtp", message_id=f"<{job_id}.{u}.{uuid.uuid4().hex[:16]}@bench.local>",
                                    attempts=1, sent_at=when)
        yield BatchCompleted(job_id=job_id, batch_no=b, batch_count=batches, succeeded=len(users) - len(failed),
                             failed=len(failed), failures=failed, source_partition=b % 12, source_offset=b // 12,
                             sent_by={"smtp": len(users) - len(failed)}, completed_at=when)
    yield JobCompleted(job_id=job_id, total=n, succeeded=n - n // FAIL_EVERY, failed=n // FAIL_EVERY,
                       completed_at=t0 + timedelta(seconds=batches * 0.2))


async def write_log(settings: Settings, events: Iterator[Event]) -> int:
    """Produce ``events`` through the project's publisher (acks=all, batched, awaited at the end)."""
    from eventlog.publisher import EventPublisher

    publisher = EventPublisher(settings, source="urn:manireports:offload:bench")
    await publisher.start()
    count = 0
    try:
        pending = []
        for event in events:
            pending.append(await publisher.send(event))
            count += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await publisher.stop()
    return count


async def read_rate(settings: Settings, expected: int, *, decode: bool) -> float:
    """Events/s reading every projected topic from offset 0 (and decoding each record when ``decode``)."""
    from eventlog.topics import EVENT_TOPICS, MAX_MESSAGE_BYTES, partitions_of
    from schemas.envelope import decode as decode_record

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                                enable_auto_commit=False, isolation_level="read_committed",
                                max_partition_fetch_bytes=MAX_MESSAGE_BYTES, fetch_max_bytes=MAX_MESSAGE_BYTES * 2)
    await consumer.start()
    try:
        partitions = [TopicPartition(settings.topic(t), p) for t in EVENT_TOPICS
                      for p in await partitions_of(consumer, settings.topic(t))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        started = time.perf_counter()
        seen = 0
        while seen < expected:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                seen += len(records)
                if decode:
                    for record in records:
                        decode_record(record.value, record.headers)
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def children_cpu_seconds() -> float:
    """CPU of this process's children that have ended (the replay's decoder process, once reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check_rebuilt(settings: Settings, schema: str, job_id: str, n: int) -> dict[str, Any]:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        row = conn.execute("SELECT status, succeeded, failed, batches_done, batch_count FROM jobs WHERE job_id = %s",
                           (job_id,)).fetchone()
        if row is None:
            raise AssertionError(f"job {job_id} is missing from the rebuilt read models")
        status, succeeded, failed, done, batches = row
        by_status: dict[str, int] = dict(conn.execute("SELECT status, count(*) FROM job_recipients WHERE job_id = %s "
                                      "GROUP BY status", (job_id,)).fetchall())
    check = {"status": status, "succeeded": succeeded, "failed": failed, "batches_done": done,
             "batch_count": batches, "recipients_by_status": by_status}
    ok = (status == "completed" and succeeded == by_status.get("sent") == n - n // FAIL_EVERY
          and failed == by_status.get("failed") == n // FAIL_EVERY and done == batches == (n + BATCH - 1) // BATCH)
    if not ok:
        raise AssertionError(f"rebuilt read models are wrong: {check}")
    return check


def drop(settings: Settings, schemas: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    async def drop_topics() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()

    asyncio.run(drop_topics())
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def stack() -> tuple[str, str]:
    """(Kafka bootstrap, database URL): a stack named by the environment, else the dev stack (started if need be)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("DATABASE_URL"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["DATABASE_URL"]
    from devtools import devstack

    info = devstack.up(Path(__file__).resolve().parents[1] / ".dev", start_mail_sink=False, log=lambda *a: None)
    return info.kafka_bootstrap, info.database_url


def main(argv: list[str] | None = None) -> int:
    from eventlog.topics import create_topics
    from offload.replay import replay

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="learners of the job whose log is replayed")
    parser.add_argument("--repeat", type=int, default=2, help="replays of the same log (the best one counts)")
    args = parser.parse_args(argv)

    kafka, database_url = stack()
    tag = uuid.uuid4().hex[:8]
    settings = Settings(environment="test", kafka_bootstrap_servers=kafka, database_url=database_url,
                        topic_prefix=f"breplay{tag}.", app_id=f"breplay{tag}", projection_schema=f"breplay_{tag}")
    out: dict[str, Any] = {"learners": args.n, "cores": os.cpu_count(),
                           "load_before": [round(x, 2) for x in os.getloadavg()]}
    schemas = [f"breplay_{tag}_{i}" for i in range(args.repeat)]
    try:
        asyncio.run(create_topics(settings))
        started = time.perf_counter()
        events = asyncio.run(write_log(settings, job_log(f"replay-{tag}", args.n)))
        out.update(events=events, write_seconds=round(time.perf_counter() - started, 2))
        out["raw_read_events_per_s"] = round(asyncio.run(read_rate(settings, events, decode=False)))
        out["decode_events_per_s"] = round(asyncio.run(read_rate(settings, events, decode=True)))
        postmaster = postmaster_of(database_url)
        out["postgres_cpu_of"] = "this server" if postmaster else "every postgres process on the machine"
        walls, steady, startup = [], [], []
        for schema in schemas:
            cpu, pg_cpu, child = time.process_time(), postgres_cpu_seconds(postmaster), children_cpu_seconds()
            called = time.monotonic()
            stats = asyncio.run(replay(settings, schema))
            walls.append(time.monotonic() - called)
            cpu, pg_cpu = time.process_time() - cpu, postgres_cpu_seconds(postmaster) - pg_cpu
            out.setdefault("decoder_cpu_s_runs", []).append(round(children_cpu_seconds() - child, 2))
            out.setdefault("built_apart_runs", []).append(stats.built_apart)
            assert stats.events == events, (stats.events, events)
            assert stats.first_record_at is not None
            steady.append(stats.steady_per_second)
            startup.append(stats.first_record_at - called)
            out.setdefault("replay_cpu_s_runs", []).append(round(cpu, 2))
            out.setdefault("postgres_cpu_s_runs", []).append(round(pg_cpu, 2))
            out["check"] = check_rebuilt(settings, schema, f"replay-{tag}", args.n)
        # Two rates: the whole call (dropping the schema, connecting, creating the read models, finding the
        # partitions and their offsets: start-up included), and steady (first record in hand -> last commit).
        out["replay_wall_s_runs"] = [round(w, 2) for w in walls]
        out["replay_startup_s_runs"] = [round(s, 3) for s in startup]
        out["replay_events_per_s"] = round(events / min(walls))
        out["replay_steady_events_per_s_runs"] = [round(r) for r in steady]
        out["replay_steady_events_per_s"] = round(max(steady))
        # The machine is shared: CPU time says what a quiet one would do. Projector and Postgres work at once
        # (each poll is decoded while the previous one commits), so a quiet 2-core machine needs about the
        # larger of the two (and Kafka's share besides).
        cpu = min(out["replay_cpu_s_runs"])
        out["replay_events_per_projector_cpu_s"] = round(events / cpu)
        out["projector_us_per_event"] = round(cpu * 1e6 / events, 1)
        # The projector's decoder process (projections/decoder.py), reaped when the replay ends.
        out["decoder_us_per_event"] = round(min(out["decoder_cpu_s_runs"]) * 1e6 / events, 1)
        out["postgres_us_per_event"] = round(min(out["postgres_cpu_s_runs"]) * 1e6 / events, 1)
        out["replay_to_decode"] = round(out["replay_events_per_s"] / out["decode_events_per_s"], 2)
        out["replay_to_raw_read"] = round(out["replay_events_per_s"] / out["raw_read_events_per_s"], 2)
        out["target_50k_events_per_s_met"] = out["replay_events_per_s"] >= 50_000
        out["target_50k_met_steady"] = out["replay_steady_events_per_s"] >= 50_000
    finally:
        drop(settings, schemas)
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
