"""Reading the event log as an operator or analyst: live decoded events (``tail``) and CSV export (``export``).

Parquet export (typed columns, for DuckDB/pandas/Spark) is in ``offload.export_parquet``; it reads the log
through :func:`read_log` too.
"""

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
from eventlog.topics import EVENT_TOPICS, MAX_MESSAGE_BYTES, partitions_of, public_topics
from schemas.envelope import UndecodableRecord, decode, header
from schemas.events import Event, JobAccepted, JobRejected

TYPE_PREFIX = "org.manireports.offload."
# Left out of exports: a batch's learners (personal data, and the whole job again) and the template's data.
EXCLUDED_FIELDS = frozenset({"recipients", "template_data"})


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


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One decoded record of the log and where it lies."""

    topic: str
    partition: int
    offset: int
    when: datetime  # the record's broker timestamp
    attrs: dict[str, str]  # CloudEvents attributes without the ce_ prefix: id, source, type, time, subject
    event: Event


async def read_log(settings: Settings, *, follow: bool, from_beginning: bool,
                   topics: tuple[str, ...] = EVENT_TOPICS) -> AsyncIterator[LogEntry]:
    """Every decodable record of the given topics (short names), up to their current end unless ``follow``."""
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
                    yield LogEntry(tp.topic, tp.partition, record.offset, when, attrs, event)
    finally:
        await consumer.stop()


async def companies_of_jobs(settings: Settings) -> dict[str, int]:
    """job id -> company id, from the jobs topic: outcome events carry the job id only."""
    companies: dict[str, int] = {}
    async for entry in read_log(settings, follow=False, from_beginning=True, topics=("jobs",)):
        if isinstance(entry.event, JobAccepted | JobRejected) and entry.event.company_id is not None:
            companies[entry.event.job_id] = entry.event.company_id
    return companies


def company_of(event: Event, companies: dict[str, int]) -> int | None:
    """The company an event belongs to: its own company_id, else its job's (None: unknown or no job)."""
    own = getattr(event, "company_id", None)  # only some types carry it; the others are looked up by job
    if own is not None:
        return own
    job_id = getattr(event, "job_id", None)
    return companies.get(job_id) if job_id is not None else None


async def tail(settings: Settings, flt: EventFilter, *, follow: bool, from_beginning: bool,
               out: TextIO = sys.stdout) -> int:
    count = 0
    async for entry in read_log(settings, follow=follow, from_beginning=from_beginning):
        if not flt.matches(entry.event, entry.when):
            continue
        data = entry.event.model_dump(mode="json", exclude=set(EXCLUDED_FIELDS))
        short = entry.attrs["type"].removeprefix(TYPE_PREFIX)
        out.write(f"{entry.when:%H:%M:%S.%f}"[:-3]
                  + f" {entry.topic:28} {short:34} {json.dumps(data, ensure_ascii=False)}\n")
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
        async for entry in read_log(settings, follow=False, from_beginning=True):
            event = entry.event
            if not flt.matches(event, entry.when):
                continue
            row = {"topic": entry.topic, "record_time": entry.when.isoformat(),
                   **{f"ce_{k}": v for k, v in entry.attrs.items()},
                   **flatten(event.model_dump(mode="json", exclude=set(EXCLUDED_FIELDS)))}
            name = event.ce_type.removeprefix(TYPE_PREFIX)
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
