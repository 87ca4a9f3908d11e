"""The worker forgets a finished job's table state after finished_job_retention_days, and not before."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from eventlog.topics import partitions_of
from offload.client import request_retry, submit_job
from schemas.events import JobCompleted
from streams.state import KnownJob
from tests.support.observe import events, wait_for, wait_for_job

pytestmark = pytest.mark.integration

RETENTION_SECONDS = 4.0


async def _changelog(settings, table: str) -> list[tuple[int, str, object, int]]:
    """(partition, key, value or None for a tombstone, broker time in ms) of a table's changelog."""
    topic = f"{settings.app_id}-{table}-changelog"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out = []
        while any([await consumer.position(tp) < ends[tp] for tp in parts]):
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                out += [(tp.partition, json.loads(r.key), None if r.value is None else json.loads(r.value),
                         r.timestamp) for r in records]
        return out
    finally:
        await consumer.stop()


async def _write_spend(settings, entries: dict[str, float]) -> None:
    """Spend entries as the router writes them (JSON key and value in the company-spend changelog's one
    partition), as if earlier months' cloud jobs had run before this worker started."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for key, value in entries.items():
            await producer.send_and_wait(f"{settings.app_id}-company-spend-changelog", json.dumps(value).encode(),
                                         key=json.dumps(key).encode(), partition=0)
    finally:
        await producer.stop()


def latest(settings, table: str, job_id: str) -> dict[tuple[int, str], tuple[object, int]]:
    """The last value (and its time) of each of the job's keys, per changelog partition."""
    last: dict[tuple[int, str], tuple[object, int]] = {}
    for partition, key, value, ts in asyncio.run(_changelog(settings, table)):
        if str(key).split(":")[0] == job_id:
            last[(partition, str(key))] = (value, ts)
    return last


def test_a_finished_jobs_table_state_is_deleted_after_the_retention_and_not_before(
    settings_factory, topics_for, processes, mail_sink, job_factory
):
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=50, job_expiry_interval_seconds=1,
                                finished_job_retention_days=RETENTION_SECONDS / 86400)
    topics_for(settings)
    now = datetime.now(UTC)
    this_month, three_months_ago = f"{now:%Y-%m}", f"{now.year - (now.month <= 3)}-{(now.month - 4) % 12 + 1:02d}"
    spend = {f"7:{three_months_ago}:long-ago": 0.5, f"7:{this_month}:this-month": 0.25}
    asyncio.run(_write_spend(settings, spend))
    worker = processes("worker", settings)
    processes("projector", settings)
    for userid in (7, 70, 107):
        mail_sink.reject(f"learner{userid}@example.org")  # failures: the job-failures table gets keys
    payload = job_factory("expire-me", 120, callback_url=None)
    asyncio.run(submit_job(settings, payload))
    wait_for_job(settings, "expire-me")
    (completed,) = [e for e in events(settings, "jobs") if isinstance(e, JobCompleted)]
    due_ms = (completed.completed_at.timestamp() + RETENTION_SECONDS) * 1000

    tables = ("job-progress", "job-failures", "batch-progress")

    def all_deleted() -> bool:
        return all(value is None for table in tables
                   for value, _ in latest(settings, table, "expire-me").values())

    wait_for(all_deleted, timeout=60, what="tombstones for every key of the job")
    for table in tables:
        keys = latest(settings, table, "expire-me")
        assert keys, f"{table} never held the job"
        history = defaultdict(list)
        for partition, key, value, _ in asyncio.run(_changelog(settings, table)):
            history[(partition, str(key))].append(value)
        for (partition, key), (_, ts) in keys.items():
            # The tombstone is in the partition the key's values were written to (compaction drops them)...
            assert history[(partition, key)][0] is not None, f"{table} {key}: tombstone in another partition"
            # ...and was written no earlier than the retention allows.
            assert ts >= due_ms - 1, f"{table} {key}: deleted {(due_ms - ts) / 1000:.1f} s early"
    # The job's progress, and where its run's batches lie (written once, under a key of its own).
    assert {k for _, k in latest(settings, "job-progress", "expire-me")} == {"expire-me", "expire-me:locations:0"}
    assert len(latest(settings, "batch-progress", "expire-me")) == 3  # 120 learners in batches of 50
    assert {k for _, k in latest(settings, "job-failures", "expire-me")} == {"expire-me:0:0", "expire-me:0:1",
                                                                             "expire-me:0:2"}
    # Kept on purpose: the same job id sent again must still do nothing.
    ((value, _),) = latest(settings, "known-jobs", "expire-me").values()
    assert KnownJob.from_stored(value) == KnownJob("accepted", 7)
    # The note that the job finished goes too, a few ticks later.
    wait_for(lambda: [v for v, _ in latest(settings, "finished-jobs", "expire-me").values()] == [None],
             timeout=60, what="the finished-jobs note to be dropped")

    # Past months' spend is deleted (tombstone in the one partition); this month's is kept: the budget reads it.
    spend_log = asyncio.run(_changelog(settings, "company-spend"))
    assert [(p, k, v) for p, k, v, _ in spend_log if k == f"7:{three_months_ago}:long-ago"] == [
        (0, f"7:{three_months_ago}:long-ago", 0.5), (0, f"7:{three_months_ago}:long-ago", None)]
    assert [v for _, k, v, _ in spend_log if k == f"7:{this_month}:this-month"] == [0.25]

    # The worker has really forgotten the job: a retry of it is refused as unknown.
    asyncio.run(request_retry(settings, "expire-me", only_retryable=False))
    worker.wait_for_log("retry of unknown job expire-me ignored", timeout=60)
