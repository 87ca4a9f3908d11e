"""What the agents share: Faust topics and tables, the event publisher, the dead-letter sink and the adapters."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar, cast

import faust
from aiokafka.errors import KafkaError
from faust.types import CodecArg, FutureMessage, TableT
from faust.types.tables import GlobalTableT

from config.settings import Settings
from content.email import TemplateStore
from eventlog.publisher import EventPublisher, partition_for
from resilience.backoff import backoff
from resilience.dependencies import Backoff
from resilience.reasons import reason
from schemas.envelope import UndecodableRecord, decode, header_items
from schemas.events import CompanySettingsChanged, DeadLettered
from streams.ledger import OutcomeLedger
from streams.templates import CompanyTemplates

log = logging.getLogger(__name__)
_T = TypeVar("_T")
# The topics a job's work produces to (the route agent's batches, each learner's outcome, BatchCompleted): known to
# the producer from the start, so no learner's outcome waits for a metadata refresh (EventPublisher.learn).
_JOB_WORK_TOPICS = ("batches", "outcomes", "jobs")
JOB_REQUESTS_BUFFER = 4  # job-requests records Faust holds ahead of the route agent
BATCHES_BUFFER = 32  # BatchDispatched records Faust holds ahead of the batch agent


def _raw_topic(app: faust.App, name: str, partitions: int, maxsize: int | None = None) -> faust.TopicT:
    """Agents take bytes and decode through ``schemas/``: the contract is the same for every reader. ``maxsize``:
    records Faust buffers ahead of the agent (the app's stream_buffer_maxsize when None)."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        internal=False,
        maxsize=maxsize,
    )


class BatchProgressTable(faust.Table):
    """Writes each key's changelog to the partition Kafka's partitioner gives the batch key itself.

    Faust would use the partition of the event being processed, which is wrong when several batches are
    processed at once; its use_partitioner option fails before the producer has the changelog's metadata.
    Keys are the batch key as text: Faust's recovery reads changelog keys as JSON whatever the table schema.
    """

    _last_sent: FutureMessage | None = None  # the changelog record of the last write, until ``set_durably`` takes it

    def partition_for_key(self, key: str) -> int:
        assert self.partitions is not None  # always given when the table is made (StreamContext.build)
        return partition_for(key.encode(), self.partitions)

    def send_changelog(self, partition: int | None, key: Any, value: Any, key_serializer: CodecArg = None,
                       value_serializer: CodecArg = None) -> FutureMessage:
        self._last_sent = super().send_changelog(partition, key, value, key_serializer, value_serializer)
        return self._last_sent

    async def set_durably(self, key: str, value: dict[str, Any]) -> None:
        """Set ``key`` and return once its changelog record is in the log (acks=all); raises if the broker
        refused it. Only this record is waited for: the producer's flush also waited for every other table write
        it held (batch marks, job progress, callback state, the delivery watch's counts: ~930 records in a
        50,000-learner job), up to 50-200 ms of a batch's intake (docs/benchmarks.md, session 29)."""
        self[key] = value
        sent, self._last_sent = self._last_sent, None
        assert sent is not None, "a table write produced no changelog record"
        await sent


class OutcomeKeyedTable(faust.Table):
    """A table keyed by job id and written from the outcomes topic: each key in its outcomes partition."""

    def partition_for_key(self, key: str) -> int:
        assert self.partitions is not None
        return partition_for(key.encode(), self.partitions)


class SinglePartitionGlobalTable(faust.GlobalTable):
    """A global table written from agents on many partitions: every write goes to its one changelog partition."""

    def partition_for_key(self, key: str) -> int:
        return 0


@dataclass
class StreamContext:
    app: faust.App
    settings: Settings
    job_requests: faust.TopicT
    batches: faust.TopicT
    jobs: faust.TopicT
    company_settings: faust.TopicT
    company_settings_table: GlobalTableT
    known_jobs: TableT[str, str | dict[str, Any]]  # streams.state.KnownJob
    batch_progress: BatchProgressTable
    job_progress: TableT[str, dict[str, Any]]
    job_failures: TableT[str, dict[str, Any]]
    cancelled_jobs: TableT[str, bool]
    company_spend: GlobalTableT
    paused_jobs: TableT[str, bool]
    delivery_watch: TableT[str, dict[str, Any]]
    suppression_events: faust.TopicT
    suppressions: GlobalTableT  # company:userid:scope -> streams.suppressions.SuppressionEntry
    templates: faust.TopicT
    company_templates: CompanyTemplates
    publisher: EventPublisher
    ledger: OutcomeLedger
    _started: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _services: list = field(default_factory=list)

    @classmethod
    def build(cls, app: faust.App, settings: Settings) -> StreamContext:
        s = settings
        company_settings = _raw_topic(app, s.topic("company-settings"), 1)
        return cls(
            app=app,
            settings=s,
            # A chunked job's parts are ~1 MB each and the API takes them faster than the route agent notes them:
            # with the app's buffer of 256, a 1,000,000-learner job's 100 chunks all waited in memory at once.
            job_requests=_raw_topic(app, s.topic("job-requests"), s.job_partitions, maxsize=JOB_REQUESTS_BUFFER),
            # ~20 KB each (200 learners); the batch agent has one in hand and one starting (pipelined).
            batches=_raw_topic(app, s.topic("batches"), s.batch_partitions, maxsize=BATCHES_BUFFER),
            jobs=_raw_topic(app, s.topic("jobs"), s.job_partitions),
            company_settings=company_settings,
            # Every worker holds every company's settings. Fed by the apply-settings agent from the compacted
            # settings topic; partitions=1 and recovery_buffer_size=1 per faust's own warning about GlobalTable
            # recovery. (Using the public topic itself as the changelog hangs faust's start-up.)
            company_settings_table=app.GlobalTable(
                "company-settings",
                partitions=1,
                recovery_buffer_size=1,
                default=None,
            ),
            known_jobs=app.Table("known-jobs", partitions=s.job_partitions, default=None),
            # Keyed exactly like the batches topic, so a batch's state lives in the changelog partition that
            # matches the batch's own partition: the worker that owns the batch also holds its state.
            batch_progress=cast(BatchProgressTable, app.tables.add(BatchProgressTable(
                app,
                name="batch-progress",
                beacon=app.tables.beacon,
                partitions=s.batch_partitions,
                default=None,
            ))),
            job_progress=app.Table("job-progress", partitions=s.job_partitions, default=None),
            # Who failed in which batch of which run ("job:run:batch"), kept apart from job-progress so that a
            # job's progress value stays small; read when a retry is requested.
            job_failures=app.Table("job-failures", partitions=s.job_partitions, default=None),
            # Jobs someone cancelled: every worker checks it before serving a batch.
            cancelled_jobs=cast(SinglePartitionGlobalTable, app.tables.add(SinglePartitionGlobalTable(
                app, name="cancelled-jobs", beacon=app.tables.beacon, partitions=1, recovery_buffer_size=1,
                standby_buffer_size=1, is_global=True, default=None,  # as app.GlobalTable() sets them
            ))),
            # Estimated cost of each cloud job by "company:YYYY-MM:job_id", written once per job by the router:
            # a company's spend this month is the sum of its keys (no read-modify-write between workers).
            company_spend=cast(SinglePartitionGlobalTable, app.tables.add(SinglePartitionGlobalTable(
                app, name="company-spend", beacon=app.tables.beacon, partitions=1, recovery_buffer_size=1,
                standby_buffer_size=1, is_global=True, default=None,
            ))),
            # Jobs paused on their bounce/complaint rate (JobPaused): every worker holds their batches back.
            paused_jobs=cast(SinglePartitionGlobalTable, app.tables.add(SinglePartitionGlobalTable(
                app, name="paused-jobs", beacon=app.tables.beacon, partitions=1, recovery_buffer_size=1,
                standby_buffer_size=1, is_global=True, default=None,
            ))),
            # Sent, bounced and complained counts per job (streams.pause_rule.DeliveryCounts), kept by the
            # watch-delivery agent from the outcomes topic, so in the partition of the job's outcomes.
            delivery_watch=cast(OutcomeKeyedTable, app.tables.add(OutcomeKeyedTable(
                app, name="delivery-watch", beacon=app.tables.beacon, partitions=s.outcome_partitions,
                default=None,
            ))),
            suppression_events=_raw_topic(app, s.topic("suppressions"), 1),
            # Every company's suppression list on every worker, fed by apply-suppressions: a learner is checked
            # in memory, and the compacted changelog brings the list back after a restart (docs/suppression.md).
            suppressions=cast(SinglePartitionGlobalTable, app.tables.add(SinglePartitionGlobalTable(
                app, name="suppressions", beacon=app.tables.beacon, partitions=1, recovery_buffer_size=1,
                standby_buffer_size=1, is_global=True, default=None,
            ))),
            templates=_raw_topic(app, s.topic("templates"), 1),
            # Companies' published templates (streams.templates): every worker holds every version.
            company_templates=CompanyTemplates(app.GlobalTable("company-templates", partitions=1,
                                                               recovery_buffer_size=1, default=None),
                                               TemplateStore(s.template_dir)),
            publisher=EventPublisher(s, source=f"urn:manireports:offload:worker:{s.app_id}"),
            ledger=OutcomeLedger(s),
        )

    def add_service(self, service: object) -> None:
        """Adapters with start()/stop() that should live as long as the worker."""
        self._services.append(service)

    async def ensure_started(self) -> None:
        """The publisher, the ledger and the services started, once, by whichever agent or timer needs them first.

        While no broker answers, the start of the publisher, the ledger and each service not yet started is tried
        again with back-off until one does, as the consumers wait out an outage: raised instead, it reached a timer
        (the stall sweep of an idle worker that had published nothing yet) and Faust stopped the whole worker."""
        if self._started:
            return
        async with self._lock:
            if self._started:
                return
            waits = Backoff(base=0.5, cap=self.settings.reconnect_max_delay)
            services = 0  # started so far: each is started once, the broker's outage or not
            while True:
                try:
                    await self.publisher.start()  # both keep what started, and start only what did not
                    await self.publisher.learn(_JOB_WORK_TOPICS)
                    await self.ledger.start()
                    while services < len(self._services):
                        await self._services[services].start()  # a log reader among them needs the broker too
                        services += 1
                    break
                except KafkaError as exc:
                    delay = waits.next()
                    log.warning("worker: no broker to start its producer on (%s); trying again in %.1f s",
                                reason(exc), delay)
                    await asyncio.sleep(delay)
            self._started = True

    async def stop(self) -> None:
        for service in reversed(self._services):
            try:
                await service.stop()
            except Exception:  # shutting down: log and go on stopping the rest
                log.exception("stopping %r failed", service)
        await self.ledger.stop()
        await self.publisher.stop()

    def company_settings_for(self, company_id: int) -> CompanySettingsChanged | None:
        raw = self.company_settings_table.get(str(company_id))
        return _decode_company_settings(raw) if raw else None

    async def guarded(self, message: faust.types.Message, stage: str,
                      handle: Callable[[faust.types.Message], Awaitable[_T]], attempts: int = 4) -> _T | None:
        """Handle one record; retry an unexpected failure (a broker or database hiccup) with backoff, and
        dead-letter the record only when it keeps failing, so one poison record never stops the agent.
        Returns what ``handle`` returned, or None once the record was dead-lettered."""
        await self.ensure_started()
        for attempt in range(1, attempts + 1):
            try:
                return await handle(message)
            except Exception as exc:
                if attempt == attempts:
                    log.exception("%s gave up on %s[%s]@%s", stage, message.topic, message.partition, message.offset)
                    await self.dead_letter(message, f"{stage} failed {attempts} times: {exc!r}", stage)
                    return None
                log.warning("%s failed on %s[%s]@%s (attempt %d): %r; retrying", stage, message.topic,
                            message.partition, message.offset, attempt, exc)
                await asyncio.sleep(backoff(attempt, base=0.5, jitter="none"))
        return None

    async def dead_letter(self, message: faust.types.Message, error: str, stage: str) -> None:
        """Keep a record nobody could process, with its bytes and the reason; never stop the agent."""
        log.warning("dead-lettering %s[%s]@%s (%s): %s", message.topic, message.partition, message.offset,
                    stage, error)
        headers = {}
        for key, value in header_items(message.headers):
            headers[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        event = DeadLettered(
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            key_b64=base64.b64encode(message.key).decode() if isinstance(message.key, bytes) else None,
            value_b64=base64.b64encode(message.value or b"").decode(),
            headers=headers,
            error=error[:2000],
            stage=stage,
        )
        await self.publisher.send_and_wait(event)


@lru_cache(maxsize=4096)
def _decode_company_settings(raw: str) -> CompanySettingsChanged | None:
    try:
        event = decode(raw.encode(), None, default=CompanySettingsChanged)
    except UndecodableRecord:
        log.error("undecodable company settings record ignored")
        return None
    return event if isinstance(event, CompanySettingsChanged) else None
