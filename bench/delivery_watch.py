"""CPU the worker spends per outcome event on watching bounce rates (the watch-delivery agent).

``python -m bench.delivery_watch -n 20000`` (with KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL set) creates fresh
topics, starts one ``offload worker``, measures its idle CPU, then publishes n RecipientSent of one job (and
n/100 RecipientBounced of another, below the threshold) straight onto the outcomes topic, waits until the
worker's consumer group has committed past them all, and prints one JSON line: the worker's CPU per outcome
beyond its idle rate. Nothing is sent by mail: what is measured is the watch alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from bench.measure import cpu_seconds
from config.settings import Settings
from devtools.processes import READY, ServiceProcess
from eventlog.publisher import EventPublisher
from eventlog.topics import create_topics
from schemas.events import RecipientBounced, RecipientSent

REPO = Path(__file__).resolve().parents[1]


async def committed(settings: Settings) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.app_id)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == settings.topic("outcomes"))


async def publish(settings: Settings, n: int) -> tuple[int, int]:
    """Publishes the outcomes; returns how many, and the sum over partitions of the log end after them."""
    publisher = EventPublisher(settings, source="urn:bench")
    await publisher.start()
    try:
        sent = (RecipientSent(job_id="watch-a", batch_no=u // 200, userid=u, email=f"l{u}@example.org",
                              provider="smtp", message_id=f"<{u}@bench>", attempts=1, company_id=7)
                for u in range(n))
        where = await publisher.send_all(sent)
        bounces = (RecipientBounced(job_id="watch-a", userid=u, email=f"l{u}@example.org", provider="mailgun",
                                    provider_event_id=f"ev{u}", occurred_at=datetime.now(UTC))
                   for u in range(n // 100))
        where += await publisher.send_all(bounces)
    finally:
        await publisher.stop()
    ends: dict[int, int] = {}
    for partition, offset in where:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return n + n // 100, sum(ends.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20_000)
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    settings = Settings(environment="test", topic_prefix=f"bw{tag}.", app_id=f"bw{tag}", job_partitions=3,
                        batch_partitions=3, outcome_partitions=3, broker_session_timeout=6.0)
    asyncio.run(create_topics(settings, with_changelogs=True))
    worker = ServiceProcess("worker", settings, Path(tempfile.mkdtemp(prefix="bench-watch-")), READY["worker"],
                            cwd=REPO).start()
    try:
        time.sleep(3)
        idle_start, t0 = cpu_seconds(worker.pid), time.monotonic()
        time.sleep(10)
        idle_rate = (cpu_seconds(worker.pid) - idle_start) / (time.monotonic() - t0)
        before, t0 = cpu_seconds(worker.pid), time.monotonic()
        total, target = asyncio.run(publish(settings, args.n))
        while asyncio.run(committed(settings)) < target:
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        used = cpu_seconds(worker.pid) - before - idle_rate * elapsed
        print(json.dumps({"outcomes": total, "seconds": round(elapsed, 1), "worker_idle_cpu_per_s": round(idle_rate, 3),
                          "worker_cpu_ms_per_outcome": round(used / total * 1000, 3)}))
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
