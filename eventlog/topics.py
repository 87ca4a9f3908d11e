"""The public topics, created on purpose (partitions, compaction, retention chosen here), never auto-created."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError, TopicAlreadyExistsError

from config.settings import Settings

log = logging.getLogger(__name__)

# One 100,000-recipient job request is ~10-15 MB of JSON; the broker's default limit is 1 MB.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
KEEP_FOREVER = "-1"  # the log is the system of record: projections are rebuilt from offset 0
DAY_MS = 24 * 3600 * 1000
# Working topics outlive the worker's memory of a finished job by this much, so a retry asked for on the last
# day still finds the job's batches (a long job's first batches are older than its completion).
WORKING_TOPIC_MARGIN_DAYS = 7
# Every topic made here keeps each segment's two indexes at 1 MiB instead of Kafka's 10. The broker maps them
# as sparse files, and its first write to a new one zero-fills as much of it as the disk reads ahead, in the
# request thread: with an 8 MiB read_ahead_kb that held a produce ~110 ms for each new partition, and the batch
# behind it (docs/benchmarks.md, session 30). A segment then rolls after >= ~340 MiB of log instead of 1 GiB.
# Set per topic as it is made, never on a broker or an existing topic: a broker whose active segment holds more
# index entries than a smaller size allows refuses to start ("newPosition > limit", tried on Kafka 4.1.1).
INDEX_BYTES = 1024 * 1024


def working_retention_ms(settings: Settings) -> str:
    """How long job-requests and batches keep records: see docs/retention.md."""
    return str(round((settings.finished_job_retention_days + WORKING_TOPIC_MARGIN_DAYS) * DAY_MS))


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str  # short name; full name is Settings.topic(name)
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


def public_topics(settings: Settings) -> list[TopicSpec]:
    keep = {"retention.ms": KEEP_FOREVER}
    # Requests and batches are working topics: they carry every learner's personal data, and everything that
    # came of them is kept in jobs and outcomes. They live as long as a retry may need them (docs/retention.md).
    working = {"retention.ms": working_retention_ms(settings), "max.message.bytes": str(MAX_MESSAGE_BYTES)}
    return [
        TopicSpec("job-requests", settings.job_partitions, working, "JobRequested from Moodle, keyed by job id"),
        TopicSpec("company-settings", 1,
                  {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
                  "CompanySettingsChanged, compacted by company id: the latest settings of every company"),
        TopicSpec("jobs", settings.job_partitions, keep,
                  "job lifecycle: accepted, rejected, batch completed, fell back, completed"),
        TopicSpec("batches", settings.batch_partitions, working,
                  "BatchDispatched, keyed job:run:batch so one job spreads over every worker"),
        TopicSpec("outcomes", settings.outcome_partitions, keep,
                  "one event per recipient: sent, failed, certificate issued; keyed by job id"),
        TopicSpec("callbacks", settings.job_partitions, keep, "callback attempts to Moodle"),
        TopicSpec("dead-letters", 1, keep, "records no agent could decode or process, with original bytes"),
        TopicSpec("provider-health", 1, keep,
                  "circuit breaker openings and closings per cloud provider account and region"),
        # Kept forever (not compacted): the history of every list is the log; the worker's table and the
        # read model hold the current entries (docs/suppression.md).
        TopicSpec("suppressions", 1, keep,
                  "unsubscribes, suppressions and removals, keyed company:userid:scope"),
        # Not compacted: a job keeps rendering the version it was accepted with, so every version must stay.
        TopicSpec("templates", 1, keep,
                  "TemplatePublished / TemplateRetired: companies' own email templates, keyed company:template_id"),
    ]


# The topics that hold what happened (every public topic but the raw job requests, which the route agent turns
# into JobAccepted/JobRejected): what the projector reads into Postgres and what `offload tail/export` show.
EVENT_TOPICS = ("company-settings", "jobs", "batches", "outcomes", "callbacks", "dead-letters", "provider-health",
                "suppressions", "templates")

# Faust's table changelogs, named as Faust names them ("{app_id}-{table}-changelog"). Created here with the
# partition count of their source topic so a fresh worker never races Faust's own creation (a changelog seen
# with 0 partitions fails the table's partition check).
TABLES = {"known-jobs": "job_partitions", "job-progress": "job_partitions", "job-failures": "job_partitions",
          "batch-progress": "batch_partitions", "company-settings": None, "cancelled-jobs": None,
          "company-spend": None, "company-templates": None, "budget-waits": "job_partitions",
          "paused-jobs": None, "delivery-watch": "outcome_partitions",
          "callbacks": "job_partitions", "finished-jobs": None, "suppressions": None, "job-chunks": "job_partitions"}


def changelog_topics(settings: Settings) -> list[TopicSpec]:
    return [
        TopicSpec(f"{settings.app_id}-{table}-changelog", getattr(settings, attr) if attr else 1,
                  {"cleanup.policy": "compact"}, f"changelog of the worker's {table} table")
        for table, attr in TABLES.items()
    ]


async def partitions_of(consumer: AIOKafkaConsumer, topic: str, *, wait: float = 10.0) -> list[int]:
    """A topic's partition numbers, refreshing the consumer's metadata until the topic is known (or [])."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        found = consumer.partitions_for_topic(topic)
        if found or loop.time() >= deadline:
            return sorted(found or [])
        # aiokafka has no public refresh; partitions_for_topic() only reads the metadata it already has.
        await consumer._client.force_metadata_update()  # noqa: SLF001
        if not consumer.partitions_for_topic(topic):  # known now (the usual case): no need to wait 0.1 s
            await asyncio.sleep(0.1)


async def offsets_of(settings: Settings, shorts: Iterable[str], *, end: bool) -> dict[tuple[str, int], int]:
    """For each partition of these public topics (short names): the first offset the log still holds, or with
    ``end`` the offset its next record will get."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        places = [TopicPartition(settings.topic(short), p) for short in shorts
                  for p in await partitions_of(consumer, settings.topic(short))]
        found = await (consumer.end_offsets(places) if end else consumer.beginning_offsets(places))
        return {(tp.topic, tp.partition): offset for tp, offset in found.items()}
    finally:
        await consumer.stop()


async def create_topics(settings: Settings, *, with_changelogs: bool = False) -> dict[str, str]:
    """Create the missing public topics (and the worker's changelogs); return name -> 'created' | 'exists'."""
    specs = public_topics(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        result: dict[str, str] = {}
        missing = []
        named = [(settings.topic(spec.name), spec) for spec in specs]
        if with_changelogs:
            named += [(spec.name, spec) for spec in changelog_topics(settings)]
        for name, spec in named:
            if name in existing:
                result[name] = "exists"
            else:
                missing.append(NewTopic(name, spec.partitions, settings.topic_replication,
                                        topic_configs={"segment.index.bytes": str(INDEX_BYTES), **spec.config}))
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:  # another process won the race; fine
                pass
            for topic in missing:
                result[topic.name] = "created"
    finally:
        await admin.close()
    if missing:
        await _until_led(settings, [topic.name for topic in missing])
    return result


async def _until_led(settings: Settings, names: list[str], *, wait: float = 30.0) -> None:
    """Return once the broker leads every partition of these new topics (or after ``wait`` seconds).

    The controller answers CreateTopics, and metadata names a leader, before that broker has made the partitions'
    logs (a fresh KRaft broker takes ~10 ms each: 1-2 s for the ~150 partitions with the changelogs). A producer
    in that window is refused NOT_LEADER_OR_FOLLOWER, retries, and logs a warning per retry; ListOffsets is refused
    the same way but retried quietly, so asking each partition's end offset waits the window out."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                                enable_auto_commit=False, request_timeout_ms=int(wait * 1000))
    await consumer.start()
    try:
        places = [TopicPartition(name, p) for name in names for p in await partitions_of(consumer, name, wait=wait)]
        await consumer.end_offsets(places)
    except KafkaTimeoutError:  # not worth failing for: the producers retry until the partitions are led
        log.warning("the new topics' partitions were not all led after %.0f s; producers will retry", wait)
    finally:
        await consumer.stop()
