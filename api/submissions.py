"""Hands jobs to Kafka exactly once per job id from this process, and remembers what it handed over.

The same job id again (Moodle resubmitting after a timeout) never becomes a second JobRequested: the jobs read
model is asked first, and ids this process is handing over or has handed over are remembered, because the
read model only learns of a job once a worker has routed it. Across API restarts or several API processes the
worker's own known-jobs table still drops a repeated request.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from api.errors import ApiError
from api.store import ReadStore
from eventlog.publisher import EventPublisher
from eventlog.topics import MAX_MESSAGE_BYTES
from resilience.dependencies import DEPENDENCIES
from schemas.envelope import Record, encode
from schemas.events import JobRequested, scoped_job_id


@dataclass(frozen=True, slots=True)
class Submission:
    job_id: str
    company_id: int | None
    status: str  # "submitted" when this call handed it over; the read model's status when it existed
    created: bool


class Submissions:
    def __init__(self, publisher: EventPublisher, store: ReadStore, *, source: str, remember: int = 100_000,
                 handoff_timeout: float = 10.0, retry_after: int = 5) -> None:
        self._publisher = publisher
        self._handoff_timeout = handoff_timeout
        self._retry_after = retry_after
        self._store = store
        self._source = source
        self._remember = remember
        self._in_flight: dict[str, tuple[int, asyncio.Future[None]]] = {}
        self._handed_over: OrderedDict[str, int] = OrderedDict()  # job id -> company, newest last

    def handed_over(self, job_id: str) -> int | None:
        """The company of a job this process handed to Kafka (its read model row may not exist yet)."""
        return self._handed_over.get(job_id)

    async def submit(self, job: JobRequested, *, may_see: set[int] | None) -> Submission:
        """Hand the job over once; ``may_see`` None means the caller sees every company (admin).

        A company key whose job id another company already uses gets its job stored as
        ``scoped_job_id(id, company)``: it is accepted like any other, and nothing about the other company's job
        is revealed. The returned Submission names the stored id."""
        try:
            return await self._submit(job, may_see=may_see)
        except _ForeignId:
            # api.jobs refused ids too long to scope, whether or not anyone holds them, so the answer never
            # depends on another company's ids.
            scoped = scoped_job_id(job.job_id, job.company_id)
            try:
                return await self._submit(job.model_copy(update={"job_id": scoped}), may_see=may_see)
            except _ForeignId:  # only a producer other than the API could have put another company's job here
                raise ApiError(409, "job_id_taken", "this job id is already in use; choose another") from None

    async def _submit(self, job: JobRequested, *, may_see: set[int] | None) -> Submission:
        job_id = job.job_id
        in_flight = self._in_flight.get(job_id)
        if in_flight is not None:
            company, pending = in_flight
            self._check_owner(company, may_see)
            await asyncio.shield(pending)
            return Submission(job_id, company, "submitted", created=False)
        # Registered before the first await, so a concurrent resubmission waits for this one.
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight[job_id] = (job.company_id, future)
        try:
            row = await self._store.job(job_id)
            if row is not None:
                self._check_owner(row["company_id"], may_see)
                future.set_result(None)
                return Submission(job_id, row["company_id"], row["status"], created=False)
            known = self._handed_over.get(job_id)
            if known is not None:  # handed over, not routed yet
                self._check_owner(known, may_see)
                future.set_result(None)
                return Submission(job_id, known, "submitted", created=False)
            record = encode(job, source=self._source)
            if len(record.value) > MAX_MESSAGE_BYTES - 64 * 1024:
                raise ApiError(413, "body_too_large", "the job is too large for one Kafka record")
            # acks=all, idempotent producer: once this returns, the request is durable in Kafka.
            await self._hand_over(record, job_id, job.company_id)
            future.set_result(None)
            return Submission(job_id, job.company_id, "submitted", created=True)
        except asyncio.CancelledError:
            if not future.done():
                future.cancel()
            raise
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved here: waiters re-raise it, nobody else needs to
            raise
        finally:
            self._in_flight.pop(job_id, None)

    async def _hand_over(self, record: Record, job_id: str, company_id: int) -> None:
        """Produce the job and wait for the broker's ack, at most ``handoff_timeout`` seconds.

        Kafka gone (broker restarting, network): 503 with Retry-After instead of a request that hangs. The
        record stays in the producer and may still land; the job id is then remembered as handed over, and a
        resubmission meanwhile is dropped by the worker's known-jobs table anyway.
        """
        delivery: asyncio.Future | None = None
        try:
            delivery = await asyncio.wait_for(self._publisher.send_record(record), self._handoff_timeout)
            await asyncio.wait_for(asyncio.shield(delivery), self._handoff_timeout)
        except (TimeoutError, KafkaError) as exc:
            DEPENDENCIES.lost("kafka", f"job hand-off: {type(exc).__name__} {exc}".strip())
            if delivery is not None:
                delivery.add_done_callback(
                    lambda done: None if done.cancelled() or done.exception() is not None
                    else self._remember_handed_over(job_id, company_id))
            raise ApiError(503, "broker_unavailable", f"Kafka did not take the job within "
                           f"{self._handoff_timeout:.0f} s; submit it again later with the same job id (a job "
                           f"is served once)", retry_after=self._retry_after) from None
        self._remember_handed_over(job_id, company_id)

    @staticmethod
    def _check_owner(company_id: int | None, may_see: set[int] | None) -> None:
        if may_see is not None and company_id not in may_see:
            raise _ForeignId

    def remember(self, job_id: str, company_id: int) -> None:
        """A job handed to Kafka another way (a chunked job's commit, api.chunked)."""
        self._remember_handed_over(job_id, company_id)

    def _remember_handed_over(self, job_id: str, company_id: int) -> None:
        self._handed_over[job_id] = company_id
        while len(self._handed_over) > self._remember:
            self._handed_over.popitem(last=False)


class _ForeignId(Exception):
    """The job id is used by a company the caller is not: submit() scopes the id instead of saying so."""
