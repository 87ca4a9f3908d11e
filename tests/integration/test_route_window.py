"""A job with more batches than the route agent keeps unacknowledged (streams.agents.routing.IN_FLIGHT_BATCHES),
cut from chunks: every batch is in the log once, BatchesDispatched names exactly where each one lies (progress
re-sends from there), the job completes and every learner gets the message once."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from offload.client import submit_job
from schemas.events import BatchDispatched, BatchesDispatched
from streams.agents.routing import IN_FLIGHT_BATCHES
from tests.support.observe import records, wait_for_job

pytestmark = pytest.mark.integration

BATCH = 2
N = (IN_FLIGHT_BATCHES * 2 + 7) * BATCH  # more than two windows, the last one partial


def test_batches_beyond_the_in_flight_window_are_all_placed_and_served(settings_factory, topics_for, processes,
                                                                        job_factory, mail_sink):
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=BATCH, max_recipients_per_job=100)
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("windowed-job", N, callback_url=None), chunk_size=100))

    job = wait_for_job(settings, "windowed-job", timeout=240)
    count = N // BATCH
    assert (job["succeeded"], job["batch_count"], job["batches_done"]) == (N, count, count)

    placed = {}
    for record, event in records(settings, "batches"):
        if isinstance(event, BatchDispatched) and event.job_id == "windowed-job":
            assert event.batch_no not in placed, f"batch {event.batch_no} dispatched twice"
            placed[event.batch_no] = (record.partition, record.offset)
    assert sorted(placed) == list(range(count))
    announced = [e for _, e in records(settings, "jobs") if isinstance(e, BatchesDispatched)]
    assert len(announced) == 1
    assert [tuple(where) for where in announced[0].locations] == [placed[b] for b in range(count)]

    received = Counter(mail_sink.recipient_counts())
    assert len(received) == N and set(received.values()) == {1}
