"""Reading the event log as an operator or analyst: live decoded events (``tail``) and CSV export (``export``)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition

from config.settings import Settings
from eventlog.topics import MAX_MESSAGE_BYTES, partitions_of, public_topics
from schemas.envelope import UndecodableRecord, decode, header
from schemas.events import Event

LOG_TOPICS = ("company-settings", "jobs", "batches", "outcomes", "callbacks", "dead-letters", "provider-health")


@dataclass(frozen=True)
class EventFilter:
    job_id: str | None = None
    company_id: int | None = None
    type_contains: str | None = None  # e.g. "recipient.failed"
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, event: Event, when: datetime) -> bool:
        # getattr: the filter runs over every event type, and some (e.g. CompanySettingsChanged) have no job_id.
        if self.job_id is not None and getattr(event, "job_id", None) != self.job_id:
            return False
        if self.company_id is not None and getattr(event, "company_id", None) not in (None, self.company_id):
            return False
        if self.type_contains and self.type_contains not in event.ce_type:
            return False
        if self.since and when < self.since:
            return False
        return not (self.until and when >= self.until)


async def read_log(settings: Settings, *, follow: bool, from_beginning: bool,
                   topics: tuple[str, ...] = LOG_TOPICS) -> AsyncIterator[tuple[str, datetime, dict, Event]]:
    """(topic, record time, CloudEvents attributes, event) for every decodable record of the given topics."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                                enable_auto_commit=False, max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
    await consumer.start()
    try:
        known = {spec.name for spec in public_topics(settings)}
        partitions = [TopicPartition(settings.topic(t), p) for t in topics if t in known
                      for p in await partitions_of(consumer, settings.topic(t), wait=3.0)]
        if not partitions:
            raise SystemExit(f"no topics with prefix {settings.topic_prefix!r}: run `offload topics create`")
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        ends = await consumer.end_offsets(partitions)
        done = {tp: False for tp in partitions}
        for tp in partitions:
            done[tp] = (await consumer.position(tp)) >= ends[tp]
        while follow or not all(done.values()):
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for record in records:
                    done[tp] = record.offset + 1 >= ends[tp]
                    try:
                        event = decode(record.value, record.headers)
                    except UndecodableRecord:
                        continue
                    attrs = {name: (header(record.headers, f"ce_{name}") or b"").decode()
                             for name in ("id", "source", "type", "time", "subject")}
                    when = datetime.fromtimestamp(record.timestamp / 1000, UTC)
                    yield tp.topic, when, attrs, event
    finally:
        await consumer.stop()


async def tail(settings: Settings, flt: EventFilter, *, follow: bool, from_beginning: bool,
               out: TextIO = sys.stdout) -> int:
    count = 0
    async for topic, when, attrs, event in read_log(settings, follow=follow, from_beginning=from_beginning):
        if not flt.matches(event, when):
            continue
        data = event.model_dump(mode="json", exclude={"recipients", "template_data"})
        short = attrs["type"].removeprefix("org.manireports.offload.")
        out.write(f"{when:%H:%M:%S.%f}"[:-3] + f" {topic:28} {short:34} {json.dumps(data, ensure_ascii=False)}\n")
        out.flush()
        count += 1
    return count


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value, ensure_ascii=False)
        else:
            flat[name] = value
    return flat


async def export_csv(settings: Settings, flt: EventFilter, out_dir: Path) -> dict[str, int]:
    """One CSV per event type: CloudEvents attributes + flattened data, one row per event."""
    out_dir.mkdir(parents=True, exist_ok=True)
    writers: dict[str, tuple[Any, csv.DictWriter]] = {}
    counts: dict[str, int] = {}
    try:
        async for topic, when, attrs, event in read_log(settings, follow=False, from_beginning=True):
            if not flt.matches(event, when):
                continue
            row = {"topic": topic, "record_time": when.isoformat(), **{f"ce_{k}": v for k, v in attrs.items()},
                   **flatten(event.model_dump(mode="json", exclude={"recipients", "template_data"}))}
            name = event.ce_type.removeprefix("org.manireports.offload.")
            if name not in writers:
                handle = (out_dir / f"{name}.csv").open("w", newline="", encoding="utf-8")
                writer = csv.DictWriter(handle, fieldnames=list(row), extrasaction="ignore")
                writer.writeheader()
                writers[name] = (handle, writer)
            writers[name][1].writerow(row)
            counts[name] = counts.get(name, 0) + 1
    finally:
        for handle, _ in writers.values():
            handle.close()
    return counts
