"""A worker stopped while a slowly paced batch sends (a relay that takes one message a second, as some hosted
relays allow): its chunks sleep between messages, nothing in flight, so the stop gives the batch up instead of
waiting for the rest of it (a minute here, many minutes for a batch of 200 at such a rate; a rebalance waited
alike). The worker that serves the batch next sends only the learners not yet sent, each once."""

from __future__ import annotations

import asyncio
import re

import pytest

from offload.client import submit_job
from tests.support.observe import wait_for, wait_for_job

pytestmark = pytest.mark.integration


def test_a_worker_stopped_while_its_batch_is_paced_stops_and_the_next_sends_the_rest_once(
    settings_factory, topics_for, processes, job_factory, mail_sink
) -> None:
    slow = settings_factory(smtp_port=mail_sink.port, provider_rate_limits={"smtp": 1.0})
    topics_for(slow)
    worker = processes("worker", slow)
    processes("projector", slow)
    asyncio.run(submit_job(slow, job_factory("paced-stop", 60)))
    wait_for(lambda: mail_sink.count() >= 3, timeout=60, what="the paced batch under way")

    assert worker.terminate(timeout=90) >= 0
    text = worker.log_text()
    assert re.search(r"batch paced-stop:0:0 given up for now, unacked, as the worker stops or rebalances while its "
                     r"sends wait \(paced by OFFLOAD_PROVIDER_RATE_LIMITS smtp 1/s\)", text), text[-3000:]
    sent_before = mail_sink.count()
    assert sent_before < 60  # the stop did not wait for the rest of the batch

    processes("worker", slow.model_copy(update={"provider_rate_limits": {}}))
    row = wait_for_job(slow, "paced-stop", timeout=120)
    assert (row["succeeded"], row["failed"]) == (60, 0), row
    assert mail_sink.recipient_counts() == {f"learner{i}@example.org": 1 for i in range(1, 61)}
