"""The worker's committed offsets on the batches topic never pass a batch that has not finished, while the next
batch's sends overlap with the previous one's last sends and its finish (streams.agents.batches): a batch record
below a committed offset always has its BatchCompleted in the log. Held mid-batch (the batch after it already
taken and queued behind it), the commits still advance up to that batch, and no further."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from config.settings import Settings
from offload.client import submit_job
from schemas.events import BatchCompleted, BatchDispatched, RecipientFailed, RecipientSent
from tests.support.observe import events, records, wait_for, wait_for_job

pytestmark = pytest.mark.integration

N = 1200
BATCH = 50


async def _committed(settings: Settings) -> dict[int, int]:
    """The worker group's committed offset per batches partition (0 where none was committed yet)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.app_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        name = settings.topic("batches")
        out = {}
        for partition in range(settings.batch_partitions):
            offset = await consumer.committed(TopicPartition(name, partition))
            out[partition] = offset or 0
        return out
    finally:
        await consumer.stop()


def committed(settings: Settings) -> dict[int, int]:
    return asyncio.run(_committed(settings))


def first_unfinished(settings: Settings) -> dict[int, int]:
    """Per batches partition: the offset of its first batch record without a BatchCompleted (else its end)."""
    done = {(e.source_partition, e.source_offset) for e in events(settings, "jobs") if isinstance(e, BatchCompleted)}
    ends: dict[int, int] = {p: 0 for p in range(settings.batch_partitions)}
    unfinished: dict[int, int] = {}
    for record, event in records(settings, "batches"):
        assert isinstance(event, BatchDispatched), event
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
        if (record.partition, record.offset) not in done:
            unfinished[record.partition] = min(unfinished.get(record.partition, record.offset), record.offset)
    return {p: unfinished.get(p, end) for p, end in ends.items()}


def test_commits_stop_at_the_unfinished_batch_while_batches_overlap(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=BATCH, smtp_connections=2,
                                stall_redispatch_seconds=600)
    topics_for(settings)
    hold_at = 9 * BATCH + BATCH // 2  # the middle of the tenth batch served
    mail_sink.hold_after(hold_at)
    worker = processes("worker", settings)
    processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("commit-job", N)))
    wait_for(lambda: mail_sink.count() == hold_at, timeout=120, what="the middle of the tenth batch")

    # Nine batches finished, the tenth is stuck sending: the commits reach it, and never go past it.
    def nine_completed() -> dict[int, int] | None:
        unfinished = first_unfinished(settings)
        return unfinished if sum(unfinished.values()) >= 9 else None

    bound = wait_for(nine_completed, timeout=60, what="nine batches completed")
    assert sum(bound.values()) == 9, bound

    def commits_reached_bound() -> bool:
        now = committed(settings)
        assert all(now[p] <= bound[p] for p in now), f"committed {now} passed an unfinished batch {bound}"
        return now == bound

    wait_for(commits_reached_bound, timeout=60, interval=0.5, what="commits up to the unfinished batch")
    # Several commit intervals later (the worker keeps committing while it waits), still not past it.
    observe_until = time.monotonic() + 4 * 2.8
    while time.monotonic() < observe_until:
        assert commits_reached_bound(), "the committed offsets moved back"
        time.sleep(0.5)

    mail_sink.release()
    job = wait_for_job(settings, "commit-job", timeout=180)
    assert (job["total_recipients"], job["succeeded"], job["failed"]) == (N, N, 0)
    outcomes = [e for e in events(settings, "outcomes") if isinstance(e, RecipientSent | RecipientFailed)]
    assert Counter(Counter(e.userid for e in outcomes).values()) == Counter({1: N})
    counts = mail_sink.recipient_counts()
    assert sorted(counts) == sorted(f"learner{i}@example.org" for i in range(1, N + 1))
    assert set(counts.values()) == {1}
    # Every batch record is committed in the end.
    wait_for(lambda: committed(settings) == first_unfinished(settings), timeout=60, interval=0.5,
             what="every batch committed")
    assert worker.proc is not None and worker.proc.poll() is None
