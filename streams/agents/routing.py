"""route-jobs: validate each JobRequested, decide cloud or local, record why, and cut the job into batches.

A cloud job that would take its company past its monthly budget goes local (JobOverBudget) or waits
(JobWaitingForBudget, ``streams.budget_wait``) as the company's ``over_budget`` setting says.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from datetime import UTC, datetime

import faust
from pydantic import ValidationError

from content.validation import job_template_problems
from resilience.collector import gc_paused
from schemas.envelope import header
from schemas.events import (
    BatchDispatched,
    BatchesDispatched,
    CompanySettingsChanged,
    JobAccepted,
    JobOverBudget,
    JobRejected,
    JobRequested,
    JobWaitingForBudget,
    scoped_job_id,
)
from schemas.intake import IntakeResult, batch_count, template_data_problem, validate_request
from streams import budget_wait, chunked_expiry, chunked_jobs
from streams.budget import BudgetCheck, check_budget, month_of, spend_key, spent
from streams.budget_wait import BudgetWait, BudgetWaits
from streams.chunk_reader import ChunkReader
from streams.context import StreamContext
from streams.cost import cost_of
from streams.learners import Learners, ListedLearners
from streams.routing import RouteDecision, decide_route
from streams.state import KnownJob
from streams.suppressions import mail_category
from streams.templates import ResolvedTemplate

log = logging.getLogger(__name__)

# Batches handed to the producer and not yet acknowledged, at most (~20 KB each with 200 learners): the route
# agent's memory stays the same for 10,000 learners or 1,000,000. Few, because the outcomes of the batches already
# sending go through the same producer, one request at a time, behind these: with 64 (1.3 MB), the first outcomes
# of a 50,000-learner job waited ~1 s, and every SMTP session with them (docs/benchmarks.md, session 28).
IN_FLIGHT_BATCHES = 8


class JobRouter:
    def __init__(self, ctx: StreamContext, waits: BudgetWaits) -> None:
        self.ctx = ctx
        self.waits = waits
        # Held from a company's budget check to the write of the job's spend, so a job let go by the budget
        # timer and one routed now cannot both count on the same remaining budget in this worker.
        self._budget_lock = asyncio.Lock()
        self.chunked: chunked_jobs.ChunkedJobs | None = None  # jobs sent in parts (set by register)

    async def handle(self, message: faust.types.Message) -> None:
        ce_type = header(message.headers, "ce_type")
        if ce_type is not None and self.chunked is not None and ce_type.decode("utf-8", "replace") in \
                chunked_jobs.CE_TYPES:
            await self.chunked.handle(message)
            return
        if ce_type is not None and ce_type.decode("utf-8", "replace") != JobRequested.ce_type:
            await self.ctx.dead_letter(message, f"unexpected event type {ce_type[:200]!r}", "route-jobs")
            return
        try:
            with gc_paused():  # a large job's ~10^5 objects all stay alive: nothing for the collector to find
                intake = validate_request(message.value or b"",
                                          max_recipients=self.ctx.settings.max_recipients_per_job)
        except ValueError as exc:
            await self.ctx.dead_letter(message, str(exc), "route-jobs")
            return
        job_id = intake.job_id
        assert job_id is not None
        stored = self.ctx.known_jobs.get(job_id)
        if stored is not None:
            known = KnownJob.from_stored(stored)
            if known.held_by_another(intake.company_id):
                await self._scope(message, intake)
                return
            # The same job id again does nothing: Moodle may resubmit after a timeout.
            log.info("job %s already %s; repeated request ignored", job_id, known.outcome)
            return
        problems = list(intake.problems)
        resolved = None
        if intake.job is not None:
            too_large = template_data_problem(intake.job.template_data, self.ctx.settings.template_data_max_bytes)
            # Chosen once, here: every batch and retry run of the job renders this template (streams.templates).
            resolved = self.ctx.company_templates.for_job(intake.job)
            # A template that cannot work for anyone rejects the job here, not every learner one by one later.
            problems += [too_large] if too_large else [
                p.as_problem() for p in job_template_problems(
                    intake.job, self.ctx.settings,
                    email_template=resolved.template if resolved and resolved.source == "company" else None)]
        if intake.job is None or problems:
            await self.ctx.publisher.send_and_wait(
                JobRejected(job_id=job_id, company_id=intake.company_id, problems=problems)
            )
            self.ctx.known_jobs[job_id] = KnownJob("rejected", intake.company_id).to_dict()
            return
        accepted = await self._accept(intake.job, intake.duplicates_removed, (message.partition, message.offset),
                                      resolved)
        self.ctx.known_jobs[job_id] = KnownJob("accepted" if accepted else "waiting", intake.company_id).to_dict()

    async def _scope(self, message: faust.types.Message, intake: IntakeResult) -> None:
        """Another company holds this job id (issue 11 finding 12): the request becomes this company's own job
        ``scoped_job_id(id, company)``, sent again to job-requests under that key and routed from there like any
        other, so a resubmission of it is recognised as one. Two API processes may each have handed over the id
        before either job was in the read model; the first request in the id's partition keeps it, and neither
        company is told of the other or blocked by it. The API shows each company the id it chose."""
        assert intake.job_id is not None and intake.company_id is not None
        scoped = scoped_job_id(intake.job_id, intake.company_id)
        if intake.job is None:  # invalid: rejected under its own id, never under the other company's
            await self.ctx.publisher.send_and_wait(
                JobRejected(job_id=scoped, company_id=intake.company_id, problems=list(intake.problems)))
            return
        try:  # as sent, duplicates included: the scoped request's own routing removes and counts them
            job = JobRequested.model_validate({**json.loads(message.value or b""), "job_id": scoped})
        except ValidationError as exc:  # the id is too long to scope; the API refuses such ids up front
            await self.ctx.dead_letter(message, f"job id held by another company cannot be scoped: {exc}",
                                       "route-jobs")
            return
        await self.ctx.publisher.send_and_wait(job)
        log.info("job id %s is another company's: company %d's request goes on as job %s", intake.job_id,
                 intake.company_id, scoped)

    async def reroute(self, job: JobRequested, duplicates_removed: int, requested_at: tuple[int, int],
                      wait: BudgetWait) -> bool:
        """A job waiting for its budget, routed again with the settings as they are now (the budget timer).
        Its template is chosen now, when it is accepted: the company's latest version, as for a new job."""
        resolved = self.ctx.company_templates.for_job(job)
        return await self._accept(job, duplicates_removed, requested_at, resolved, wait)

    async def _accept(self, job: JobRequested, duplicates_removed: int, requested_at: tuple[int, int],
                      resolved: ResolvedTemplate | None, waited: BudgetWait | None = None, *,
                      learners: Learners | None = None) -> bool:
        """Route and dispatch the job; False when it waits for its monthly budget (nothing dispatched).

        Batches refer to the job request's place in job-requests (kept forever) for template_data instead of
        copying it: a job's data is in the log once, however many batches and retry runs it has. ``learners``
        is given for a job sent in parts (its JobOpened has none): they are read back chunk by chunk."""
        settings = self.ctx.settings
        if learners is None:
            learners = ListedLearners(job.recipients)
        total = learners.count
        async with self._budget_lock:
            company = self.ctx.company_settings_for(job.company_id)
            decision: RouteDecision | None = decide_route(
                job_type=job.type,
                company_id=job.company_id,
                recipient_count=total,
                company=company,
                offload_enabled=settings.cloud_enabled,
            )
            assert decision is not None
            if decision.route == "local":
                decision = self._after_wait(decision, waited, "the company's settings no longer send it to the cloud")
            if decision.route == "cloud":
                decision = await self._within_budget(job, company, decision, requested_at, waited, total)
            if decision is None:
                return False
            if decision.route == "cloud":
                # Written before the batches: a crash in between routes the job again under the same key.
                month = month_of(datetime.now(UTC))
                self.ctx.company_spend[spend_key(job.company_id, month, job.job_id)] = round(
                    cost_of(settings, {decision.provider: total}), 4)
        size = settings.job_batch_size
        count = batch_count(total, size)
        category, list_id = mail_category(job, settings)
        source = resolved.source if resolved else ("builtin" if job.type == "email" else None)
        version = resolved.version if resolved else None
        # Awaited before any batch exists, so progress never sees a batch of a job it does not know yet.
        await self.ctx.publisher.send_and_wait(
            JobAccepted(
                job_id=job.job_id,
                type=job.type,
                company_id=job.company_id,
                route=decision.route,
                reason=decision.reason,
                provider=decision.provider,
                template_id=job.template_id,
                total_recipients=total,
                duplicates_removed=duplicates_removed,
                batch_size=size,
                batch_count=count,
                callback_url=job.callback_url,
                callback_query_sealed=job.callback_query_sealed,
                createdby=job.createdby,
                callback_key_id=job.callback_key_id,
                category=category,
                list_id=list_id,
                template_source=source,
                template_version=version,
            )
        )
        # Produced as the batches are cut without waiting for each ack, but at most IN_FLIGHT_BATCHES unacknowledged
        # at a time: the producer's buffer, and the futures, stay bounded however many batches the job has. Each
        # location is taken from its own ack, in order; BatchesDispatched (what progress re-sends from) is only
        # produced once the broker has acknowledged every batch.
        sending: deque[asyncio.Future] = deque()
        locations: list[tuple[int, int]] = []
        number = 0
        async for chunk in learners.batches(size):
            if len(sending) >= IN_FLIGHT_BATCHES:
                metadata = await asyncio.shield(sending.popleft())  # a cancelled wait leaves the send be
                locations.append((metadata.partition, metadata.offset))
            sending.append(await self.ctx.publisher.send(BatchDispatched(
                job_id=job.job_id,
                run=0,
                batch_no=number,
                batch_count=count,
                type=job.type,
                company_id=job.company_id,
                route=decision.route,
                provider=decision.provider,
                template_id=job.template_id,
                # Inline content is read from the request too: one copy in the log, not one per batch.
                template_data_at=requested_at if job.template_data or job.content else None,
                recipients=chunk,
                notify_template_id=job.notify_template_id,
                category=category,
                list_id=list_id,
                template_source=source,
                template_version=version,
            )))
            number += 1
        assert number == count, f"job {job.job_id}: cut {number} batches, expected {count}"
        # Its own batches' acks only: the producer's flush would also wait for the outcomes of every batch sending.
        locations += [(m.partition, m.offset) for m in await asyncio.gather(*sending)]
        await self.ctx.publisher.send_and_wait(BatchesDispatched(job_id=job.job_id, run=0, locations=locations))
        log.info("job %s accepted: %s via %s (%s), %d recipients in %d batches, template %s (%s%s)", job.job_id,
                 decision.route, decision.provider, decision.reason, total, count, job.template_id,
                 source, f" v{version}" if version else "")
        return True

    async def _within_budget(self, job: JobRequested, company: CompanySettingsChanged | None,
                             decision: RouteDecision, requested_at: tuple[int, int],
                             waited: BudgetWait | None, total: int) -> RouteDecision | None:
        """The cloud decision when the job fits the monthly budget; else local with an event saying why, or
        None (the job waits, JobWaitingForBudget) when the company's setting is to wait."""
        if company is None or company.monthly_budget is None:
            return self._after_wait(decision, waited, "the company has no monthly budget now")
        month = month_of(datetime.now(UTC))
        so_far = spent(self.ctx.company_spend.items(), job.company_id, month)
        check = check_budget(self.ctx.settings, company, provider=decision.provider,
                             recipients=total, spent_this_month=so_far)
        if not check.over:
            return self._after_wait(decision, waited, f"{check.reason} fits it now")
        if company.over_budget == "wait":
            if waited is None:
                await self._wait(job, company, decision, check, month, requested_at, total)
            return None
        reason = f"{check.reason} would pass it: routed local"
        await self.ctx.publisher.send_and_wait(JobOverBudget(
            job_id=job.job_id, company_id=job.company_id, month=month, monthly_budget=company.monthly_budget,
            spent=check.spent, estimated_cost=check.estimated_cost, currency=self.ctx.settings.currency,
            provider=decision.provider, action="routed_local", reason=reason,
        ))
        log.info("job %s: %s", job.job_id, reason)
        return RouteDecision("local", reason, "smtp" if job.type == "email" else "local")

    async def _wait(self, job: JobRequested, company: CompanySettingsChanged, decision: RouteDecision,
                    check: BudgetCheck, month: str, requested_at: tuple[int, int], total: int) -> None:
        assert company.monthly_budget is not None
        reason = (f"{check.reason} would pass it: waits until the budget allows it "
                  f"(next month, or a larger budget)")
        await self.ctx.publisher.send_and_wait(JobWaitingForBudget(
            job_id=job.job_id, type=job.type, company_id=job.company_id, template_id=job.template_id,
            total_recipients=total, month=month, monthly_budget=company.monthly_budget,
            spent=check.spent, estimated_cost=check.estimated_cost, currency=self.ctx.settings.currency,
            provider=decision.provider, reason=reason, createdby=job.createdby,
        ))
        self.waits.add(job.job_id, BudgetWait(job.company_id, *requested_at, datetime.now(UTC).timestamp()))
        log.info("job %s: %s", job.job_id, reason)

    @staticmethod
    def _after_wait(decision: RouteDecision, waited: BudgetWait | None, why: str) -> RouteDecision:
        if waited is None:
            return decision
        return RouteDecision(decision.route, f"{decision.reason}; waited for the monthly budget since "
                                             f"{waited.since_text}: {why}", decision.provider)


def register(app: faust.App, ctx: StreamContext) -> None:
    waits = BudgetWaits(ctx, budget_wait.make_table(app, ctx.settings.job_partitions))
    router = JobRouter(ctx, waits)
    reader = ChunkReader(ctx.settings)
    ctx.add_service(reader)
    router.chunked = chunked_jobs.ChunkedJobs(
        ctx, chunked_jobs.make_table(app, ctx.settings.job_partitions), reader,
        lambda job, repeats, where, resolved, waited, learners: router._accept(job, repeats, where, resolved, waited,
                                                                                learners=learners))
    waits.chunked = router.chunked
    budget_wait.register(app, ctx, waits, router.reroute)
    chunked_expiry.register(app, ctx, router.chunked)  # open chunked jobs never committed are closed

    # concurrency=1: with more, faust-streaming can commit past an in-flight message (#606).
    @app.agent(ctx.job_requests, name="route-jobs", concurrency=1)
    async def route_jobs(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await ctx.guarded(event.message, "route-jobs", router.handle)

