"""Bytes a job's hand-off and routing put in Kafka, with template_data copied into every batch and uncompressed
(the code before issue 11 finding 1) and as the route agent writes it now (once per job, lz4).

Run ``python -m bench.template_data_bytes`` with the stack ``KAFKA_BOOTSTRAP_SERVERS`` names. For each layout it
creates fresh topics, writes the events the route agent writes for one job (JobRequested, JobAccepted, the
BatchDispatched records, BatchesDispatched) through the project's own publisher and encoder, and asks the
broker (DescribeLogDirs) how many bytes each topic's partitions hold: the broker's own count of what was
written, compression and record overhead included. The learners' outcomes are the same in every layout and are
left out. Deletes its topics afterwards; prints one JSON line last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Int64, Schema, String

from config.settings import Settings
from eventlog.publisher import EventPublisher
from eventlog.topics import create_topics
from schemas.events import BatchDispatched, BatchesDispatched, JobAccepted, JobRequested
from schemas.intake import batch_count, batches
from tests.support.jobs import job_payload

TOPICS = ("job-requests", "batches", "jobs")
WORDS = ("course", "learner", "completion", "module", "deadline", "safety", "training", "please", "review",
         "certificate", "assessment", "quiz", "section", "resource", "forum", "the", "and", "your", "before",
         "after", "company", "policy", "handbook", "chapter", "lesson", "video", "reading", "attempt", "grade")


class _DescribeLogDirsResponse_v1(Response):
    API_KEY = 35
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", Array(
            ("error_code", Int16),
            ("log_dir", String("utf-8")),
            ("topics", Array(
                ("name", String("utf-8")),
                ("partitions", Array(("partition_index", Int32), ("partition_size", Int64), ("offset_lag", Int64),
                                     ("is_future_key", Boolean))),
            )),
        )),
    )


class _DescribeLogDirsRequest_v1(RequestStruct):
    API_KEY = 35
    API_VERSION = 1
    RESPONSE_TYPE = _DescribeLogDirsResponse_v1
    SCHEMA = Schema(("topics", Array(("topic", String("utf-8")), ("partitions", Array(Int32)))))


class DescribeLogDirs(Request[_DescribeLogDirsRequest_v1]):
    """Kafka's DescribeLogDirs (v1; aiokafka has no call for it): the size of each partition's log."""

    API_KEY = 35

    def __init__(self, topics: dict[str, list[int]]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[_DescribeLogDirsRequest_v1]) -> _DescribeLogDirsRequest_v1:
        return request_struct_class([(topic, partitions) for topic, partitions in self._topics.items()])


async def topic_bytes(settings: Settings, names: dict[str, str]) -> dict[str, int]:
    """Bytes each topic's partitions hold on the broker(s), summed over partitions and log dirs."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics(list(names.values()))
        wanted = {t["topic"]: [p["partition"] for p in t["partitions"]] for t in described}
        sizes = dict.fromkeys(names.values(), 0)
        for broker in (await admin.describe_cluster())["brokers"]:
            response = await admin._send_request(DescribeLogDirs(wanted), broker["node_id"])  # noqa: SLF001
            for _error, _dir, topics in response.results:
                for name, partitions in topics:
                    sizes[name] += sum(size for _index, size, _lag, future in partitions if not future)
        short = {full: short for short, full in names.items()}
        return {short[name]: size for name, size in sizes.items()}
    finally:
        await admin.close()


async def delete_topics(settings: Settings, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def template_data(size: int, seed: int = 7) -> dict[str, Any]:
    """About ``size`` bytes of compact JSON of word-like text (not one repeated letter: that would flatter
    compression)."""
    rng = random.Random(seed)
    words: list[str] = []
    length = 0
    while length < size - 200:
        words.append(rng.choice(WORDS) + rng.choice(("", "", "", ",", ".", "s")))
        length += len(words[-1]) + 1
    return {"course_name": "Fire Safety 101", "due_date": "2026-12-31", "intro": " ".join(words)}


async def write_job(settings: Settings, job: JobRequested, *, copy_data: bool) -> None:
    """What route-jobs writes for an accepted job; ``copy_data``: template_data in every batch, as before."""
    publisher = EventPublisher(settings, source="urn:manireports:offload:bench")
    try:
        [requested_at] = await publisher.send_all([job])
        size = settings.job_batch_size
        count = batch_count(len(job.recipients), size)
        await publisher.send_and_wait(JobAccepted(
            job_id=job.job_id, type=job.type, company_id=job.company_id, route="local", reason="bench",
            provider="smtp", template_id=job.template_id, total_recipients=len(job.recipients),
            batch_size=size, batch_count=count, callback_url=job.callback_url, createdby=job.createdby))
        locations = await publisher.send_all(
            BatchDispatched(job_id=job.job_id, run=0, batch_no=number, batch_count=count, type=job.type,
                            company_id=job.company_id, route="local", provider="smtp", template_id=job.template_id,
                            template_data=job.template_data if copy_data else {},
                            template_data_at=None if copy_data else requested_at, recipients=chunk)
            for number, chunk in enumerate(batches(job.recipients, size)))
        await publisher.send_and_wait(BatchesDispatched(job_id=job.job_id, run=0, locations=locations))
    finally:
        await publisher.stop()


LAYOUTS = {
    "before (copied into every batch, uncompressed)": (True, "none"),
    "compression only (copied, lz4)": (True, "lz4"),
    "once per job only (referenced, uncompressed)": (False, "none"),
    "after (referenced, lz4)": (False, "lz4"),
}


async def main(learners: int, data_bytes: int) -> dict[str, Any]:
    base = Settings()
    data = template_data(data_bytes)
    job = JobRequested.model_validate(job_payload("bytes-bench", learners, template_data=data))
    results: dict[str, Any] = {}
    for name, (copy_data, codec) in LAYOUTS.items():
        settings = base.model_copy(update={"topic_prefix": f"tdb{uuid.uuid4().hex[:8]}.", "kafka_compression": codec})
        names = {short: settings.topic(short) for short in TOPICS}
        created = await create_topics(settings)
        try:
            await write_job(settings, job, copy_data=copy_data)
            sizes = await topic_bytes(settings, names)
        finally:
            await delete_topics(settings, list(created))
        results[name] = {**sizes, "total": sum(sizes.values())}
        print(f"{name:50s} " + "  ".join(f"{k} {v:>12,}" for k, v in results[name].items()), flush=True)
    template_json = len(json.dumps(data, separators=(",", ":")).encode())
    before = results["before (copied into every batch, uncompressed)"]["total"]
    after = results["after (referenced, lz4)"]["total"]
    return {"learners": learners, "template_data_bytes": template_json, "batch_size": base.job_batch_size,
            "bytes": results, "before_over_after": round(before / after, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", type=int, default=10_000)
    parser.add_argument("--template-data-bytes", type=int, default=60 * 1024)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.learners, args.template_data_bytes))))
