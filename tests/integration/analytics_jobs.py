"""Real jobs for the analytics tests and docs: several companies, templates and sizes, some learners refused
by the mail server (RecipientFailed), some bounce/delivery/complaint reports afterwards (signed Mailgun
webhooks through the API's webhook route), and one job rejected at intake. Run through the real worker and
projector."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from api import webhooks
from api.errors import MAX_BODY, json_errors
from api.store import ReadStore
from config.settings import Settings
from devtools.devmail import DevMailSink
from eventlog.publisher import EventPublisher
from offload.client import submit_job
from tests.conftest import job_payload
from tests.support.observe import query, wait_for, wait_for_job

MAILGUN_SIGNING_KEY = "analytics-sample-mailgun-signing-key"
MAILGUN_EVENTS = {"delivered": "delivered", "bounced": "failed", "complained": "complained"}
EXTRA_TEMPLATES = {
    "course_overdue": ("Overdue: {{ course_name }}", "Dear {{ firstname }}, {{ course_name }} is overdue.\n",
                       "<p>Dear {{ firstname }}, <b>{{ course_name }}</b> is overdue.</p>\n"),
    "welcome": ("Welcome to {{ course_name }}", "Welcome, {{ firstname }}!\n",
                "<p>Welcome, {{ firstname }}!</p>\n"),
}


@dataclass(frozen=True)
class SampleJob:
    job_id: str
    company_id: int
    template_id: str
    learners: int
    start: int = 1  # first userid
    refused: tuple[int, ...] = ()  # userids whose address the mail server refuses for good (550)
    reports: dict[int, str] = field(default_factory=dict)  # userid -> delivered | bounced | complained

    def email(self, userid: int) -> str:
        return f"learner{userid}@example.org"


def write_templates(directory: Path) -> Path:
    for template_id, (subject, text, html) in EXTRA_TEMPLATES.items():
        folder = directory / template_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "subject.txt").write_text(subject)
        (folder / "body.txt").write_text(text)
        (folder / "body.html").write_text(html)
    return directory


def sample_jobs(scale: int = 1) -> list[SampleJob]:
    """Three companies, three templates, sizes from 50·scale to 600·scale; learner ids never overlap."""
    plan = [  # job id, company, template, learners (·scale), refused every n-th, bounced every n-th
        ("acme-reminder-1", 7, "course_reminder", 600, 97, 41),
        ("acme-welcome-1", 7, "welcome", 200, 0, 67),
        ("globex-reminder-1", 8, "course_reminder", 300, 53, 0),
        ("globex-overdue-1", 8, "course_overdue", 100, 31, 9),
        ("initech-welcome-1", 9, "welcome", 50, 0, 0),
    ]
    jobs, start = [], 1
    for job_id, company, template, size, refuse_every, bounce_every in plan:
        n = size * scale
        ids = range(start, start + n)
        refused = tuple(u for u in ids if refuse_every and (u - start) % refuse_every == refuse_every - 1)
        reports: dict[int, str] = {}
        for u in ids:
            if u in refused:
                continue
            offset = u - start
            if bounce_every and offset % bounce_every == 3:
                reports[u] = "bounced"
            elif offset % 211 == 100:
                reports[u] = "complained"
            elif offset % 2 == 0:
                reports[u] = "delivered"
        jobs.append(SampleJob(job_id, company, template, n, start, refused, reports))
        start += n
    return jobs


async def publish_reports(settings: Settings, job: SampleJob) -> int:
    """The provider's later reports about sent messages, each POSTed as a signed Mailgun webhook (Mailgun as
    the SMTP relay: its reports name our Message-ID) to the API's real webhook route, which matches it to the
    learner in the read model and publishes the event."""
    rows = {r["userid"]: r for r in query(
        settings, "SELECT userid, email, message_id FROM job_recipients "
                  "WHERE job_id = %s AND status = 'sent'", (job.job_id,))}
    api_settings = settings.model_copy(update={"webhook_mailgun_signing_key": SecretStr(MAILGUN_SIGNING_KEY)})
    publisher, store = EventPublisher(api_settings, source="urn:manireports:offload:api"), ReadStore(api_settings)
    await publisher.start()
    await store.open()
    app = web.Application(middlewares=[json_errors])
    app[MAX_BODY] = api_settings.api_max_body_bytes
    webhooks.setup(app, api_settings, publisher, store)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/webhooks/mailgun"  # type: ignore[union-attr]
    limit = asyncio.Semaphore(8)

    async def post(http: aiohttp.ClientSession, userid: int, kind: str) -> None:
        row, now = rows[userid], time.time()
        data: dict[str, Any] = {"event": MAILGUN_EVENTS[kind], "id": f"{kind}-{job.job_id}-{userid}",
                                "recipient": row["email"], "timestamp": now,
                                "message": {"headers": {"message-id": row["message_id"].strip("<>")}}}
        if kind == "bounced":
            data |= {"severity": "permanent", "reason": "bounce",
                     "delivery-status": {"code": 550, "message": "550 5.1.1 mailbox unavailable"}}
        token = f"mg-{job.job_id}-{userid}"
        signature = hmac.new(MAILGUN_SIGNING_KEY.encode(), f"{int(now)}{token}".encode(), hashlib.sha256).hexdigest()
        body = {"signature": {"timestamp": str(int(now)), "token": token, "signature": signature}, "event-data": data}
        async with limit, http.post(url, json=body) as response:
            reply = await response.json()
            assert (response.status, reply) == (200, {"published": 1, "unmatched": 0}), (userid, kind, reply)

    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(post(http, userid, kind) for userid, kind in sorted(job.reports.items())))
        return len(job.reports)
    finally:
        await runner.cleanup()
        await store.close()
        await publisher.stop()


def run_sample(settings: Settings, mail_sink: DevMailSink, jobs: list[SampleJob], *,
               rejected_job_id: str | None = "hooli-bad-1", timeout: float = 300,
               one_at_a_time: bool = False) -> None:
    """Submit every job (and one that intake rejects), wait for each, then publish the provider reports and
    wait until the read model counts them. ``one_at_a_time``: each job starts when the one before completed
    (their times to complete are then not shared)."""
    for job in jobs:
        for userid in job.refused:
            mail_sink.reject(job.email(userid), code=550)
    for job in jobs:
        payload = job_payload(job.job_id, job.learners, company_id=job.company_id,
                              template_id=job.template_id, start=job.start)
        asyncio.run(submit_job(settings, payload))
        if one_at_a_time:
            wait_for_job(settings, job.job_id, timeout=timeout)
    if rejected_job_id:
        bad = job_payload(rejected_job_id, 3, company_id=10)
        bad["recipients"][1]["userid"] = 0  # userid must be >= 1: the whole job is rejected with the reason
        asyncio.run(submit_job(settings, bad))
    for job in jobs:
        wait_for_job(settings, job.job_id, timeout=timeout)
        asyncio.run(publish_reports(settings, job))
    if rejected_job_id:
        wait_for_job(settings, rejected_job_id, status="rejected", timeout=timeout)

    def reports_projected() -> bool:
        for job in jobs:
            row = query(settings, "SELECT delivered, bounced, complained FROM jobs WHERE job_id = %s",
                        (job.job_id,))
            kinds = list(job.reports.values())
            wanted = {k: kinds.count(k) for k in ("delivered", "bounced", "complained")}
            if not row or {k: row[0][k] for k in wanted} != wanted:
                return False
        return True

    wait_for(reports_projected, timeout=timeout, what="the provider reports in the read model")


def run_sample_on_own_processes(settings_factory: Callable[..., Settings], topics_for: Callable[[Settings], Any],
                                processes: Callable[..., Any], mail_sink: DevMailSink,
                                tmp_path: Path) -> tuple[Settings, list[SampleJob]]:
    """The sample jobs run to completion (``run_sample``) through a worker and a projector of their own, on
    fresh topics and schema, with the extra templates; the tests' fixtures are passed in."""
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=100,
                                template_dir=write_templates(tmp_path / "templates"))
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings)
    jobs = sample_jobs()
    run_sample(settings, mail_sink, jobs)
    return settings, jobs
