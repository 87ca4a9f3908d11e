"""The three-broker set-up (docker-compose.ha.yml, here as three KRaft nodes on loopback): one broker is
killed -9 mid-job, the one leading the most of the job's partitions, and is not brought back. The job
completes on the other two, every learner has the message, each learner has exactly one outcome in the log and
in Postgres, and the worker and projector never stopped."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from config.settings import Settings
from devtools.devstack import kafka
from devtools.devstack.kafka_cluster import Cluster, start_cluster
from offload.client import submit_job
from schemas.events import RecipientFailed, RecipientSent
from tests.support.api import free_port
from tests.support.faults import ControllableStack
from tests.support.observe import events, query, wait_for, wait_for_job

pytestmark = [pytest.mark.faults, pytest.mark.integration]

N = 1500
BATCH = 50


@pytest.fixture
def cluster(stack: ControllableStack, tmp_path: Path) -> Iterator[Cluster]:
    libs, _ = kafka.ensure_jars(stack.home, lambda *a: None)  # the dev stack's jars: nothing fetched again
    started = start_cluster(tmp_path / "cluster", [(free_port(), free_port()) for _ in range(3)], libs,
                            log=lambda *a: None)
    try:
        yield started
    finally:
        started.stop(log=lambda *a: None, sig=signal.SIGKILL)  # its data dies with tmp_path


async def _busiest_leader(settings: Settings) -> tuple[int, dict[int, int]]:
    """The node leading the most partitions of the topics a job writes to, and the count per node."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([settings.topic(s) for s in ("jobs", "batches", "outcomes")])
        led = Counter(partition["leader"] for topic in described for partition in topic["partitions"])
        return led.most_common(1)[0][0], dict(led)
    finally:
        await admin.close()


def test_a_job_completes_without_loss_when_a_broker_of_three_dies(
    settings_factory, topics_for, processes, job_factory, slow_sink, cluster
):
    settings = settings_factory(kafka_bootstrap_servers=cluster.bootstrap, topic_replication=3,
                                smtp_port=slow_sink.port, job_batch_size=BATCH, smtp_connections=1,
                                reconnect_max_delay=2.0)
    topics_for(settings)
    worker, projector = processes("worker", settings), processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("ha-job", N)))

    wait_for(lambda: slow_sink.count() >= 0.3 * N, timeout=180, interval=0.05, what="30% sent")
    victim, led = asyncio.run(_busiest_leader(settings))
    assert len(led) == 3, f"leadership is not spread over the three brokers: {led}"
    at_kill = slow_sink.count()
    assert at_kill < N, "the job finished before the broker could be killed; make it longer"
    cluster.kill(victim, log=lambda *a: None)
    killed_at = time.monotonic()

    job = wait_for_job(settings, "ha-job", timeout=300)
    completed_after = time.monotonic() - killed_at
    assert (job["total_recipients"], job["succeeded"], job["failed"]) == (N, N, 0)
    counts = slow_sink.recipient_counts()
    missing = [i for i in range(1, N + 1) if counts.get(f"learner{i}@example.org", 0) < 1]
    assert missing == [], f"{len(missing)} learners never received the message"
    # A broker loss may make the worker's group rebalance and a batch resume: at most its in-flight part again.
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= BATCH, f"{duplicates} duplicates, more than one batch's in-flight window"

    outcomes = [e for e in events(settings, "outcomes") if isinstance(e, RecipientSent | RecipientFailed)]
    per_learner = Counter(e.userid for e in outcomes)
    assert set(per_learner) == set(range(1, N + 1))
    assert set(per_learner.values()) == {1}, [u for u, c in per_learner.items() if c > 1][:10]
    rows = query(settings, "SELECT status, count(DISTINCT userid) AS learners FROM job_recipients "
                           "WHERE job_id = 'ha-job' GROUP BY 1")
    assert rows == [{"status": "sent", "learners": N}]
    for process in (worker, projector):
        assert process.proc is not None and process.proc.poll() is None, f"{process.command} exited"
    print("BROKER LOSS " + json.dumps({"learners": N, "sent_before_kill": at_kill, "killed_node": victim,
                                       "partitions_led": led, "duplicates": duplicates,
                                       "completed_after_kill_s": round(completed_after, 1)}))
