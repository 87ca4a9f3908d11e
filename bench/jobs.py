"""Driving a running pipeline from a benchmark: where the stack is, routing the benchmark's companies, submitting
a job and timing it to ``completed`` in Postgres, and dropping the run's own topics and schema afterwards."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
from psycopg import sql

from bench.mail_sink import LineCounter
from bench.measure import log, stack_pids
from config.settings import Settings
from projections.jobs import SHOWN_STATUS
from tests.support.jobs import job_payload

REPO = Path(__file__).resolve().parents[1]  # the checkout the started processes run in
LOCAL_COMPANY = 7
CLOUD_COMPANY = 4242
HTTP_COMPANIES = {4243: "sendgrid", 4244: "mailgun"}  # companies routed to the local SendGrid/Mailgun servers


class JobStopped(RuntimeError):
    """The job will not complete in a benchmark's time: waiting on would time the wait, not the pipeline."""

    what = "stopped"

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id} {self.what}: {reason}")
        self.job_id, self.reason = job_id, reason


class JobRefused(JobStopped):
    """The job was rejected (JobRejected in the log): waiting longer would change nothing."""

    what = "rejected"


class JobWaiting(JobStopped):
    """Its sends wait for a provider's daily quota (BatchWaitingForQuota, shown as its pacing): hours, not seconds."""

    what = "waiting"


async def _wait_completed(settings: Settings, job_id: str, timeout: float, started: float,
                          sink: LineCounter | None) -> dict[str, Any]:
    """Poll the jobs row until completed; return the row and a coarse timeline (seconds since submission)."""
    conn = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
    await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.projection_schema)))
    timeline: list[tuple[float, int, int]] = []  # (t, done in Postgres, messages at the sink)
    marks: dict[str, float] = {}
    seen: tuple[str | None, str | None] = (None, None)  # the row's last status and pacing, for a timeout's message
    last_sample = 0.0
    try:
        while True:
            now = time.monotonic() - started
            if now > timeout:
                raise TimeoutError(f"job {job_id} not completed within {timeout:.0f} s; last (s, done, at the sink) "
                                   f"{timeline[-1:]}, status {seen[0]}, pacing {seen[1]}")
            try:
                cur = await conn.execute(  # completed with its final counts, as the API shows it
                    f"SELECT {SHOWN_STATUS} AS status, total_recipients, succeeded, failed, batches_done, batch_count, "
                    "route, provider, route_reason, fell_back, estimated_cost, pacing FROM jobs j WHERE job_id = %s",
                    (job_id,))
                row = await cur.fetchone()
            except psycopg.errors.UndefinedTable:
                row = None
            if row is not None:
                status, ok, bad, pacing = row[0], row[2], row[3], row[11]
                seen = (status, pacing)
                if pacing is not None and pacing.startswith("paused: "):  # e.g. SES's 24-hour quota reached
                    raise JobWaiting(job_id, f"its sends wait: {pacing.removeprefix('paused: ')}")
                if status == "rejected":  # the route agent refused it: say why now, not after the timeout
                    cur = await conn.execute("SELECT error_message FROM jobs WHERE job_id = %s", (job_id,))
                    refused = await cur.fetchone()
                    assert refused is not None  # the row was read a moment ago
                    raise JobRefused(job_id, refused[0])
                marks.setdefault("accepted_visible", round(now, 2))
                if ok + bad > 0:
                    marks.setdefault("first_outcome_visible", round(now, 2))
                if status == "completed":
                    marks["completed_visible"] = round(now, 2)
                    if sink is not None:
                        sink.poll()
                    timeline.append((round(now, 2), ok + bad, sink.count if sink else 0))
                    return {"row": dict(zip(("status", "total", "succeeded", "failed", "batches_done",
                                               "batch_count", "route", "provider", "route_reason", "fell_back",
                                               "estimated_cost", "pacing"),
                                               row, strict=True)),
                            "marks": marks, "timeline": timeline}
                if now - last_sample >= 2.0:
                    last_sample = now
                    timeline.append((round(now, 2), ok + bad, sink.poll() if sink else 0))
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def run_job(settings: Settings, job_id: str, n: int, company_id: int, timeout: float,
            sink: LineCounter | None) -> dict[str, Any]:
    from offload.client import submit_job

    payload = job_payload(job_id, n, company_id=company_id)

    async def go() -> dict[str, Any]:
        started = time.monotonic()
        wall = time.time()
        await submit_job(settings, payload)
        submitted = time.monotonic() - started
        result = await _wait_completed(settings, job_id, timeout, started, sink)
        result["seconds"] = time.monotonic() - started
        result["marks"]["submitted(acks=all)"] = round(submitted, 2)
        result["submitted_wall"] = wall
        return result

    return asyncio.run(go())


def drop_own_artifacts(settings: Settings, tag: str) -> None:
    """Delete this run's topics (named by its unique tag), projection schema and the worker's Faust directory;
    nobody else's."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.app import data_dir

    shutil.rmtree(data_dir(settings.app_id), ignore_errors=True)

    async def drop_topics() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=30000)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics()
                    if t.startswith((settings.topic_prefix, f"{settings.app_id}-"))]
            assert all(tag in t for t in mine)
            if mine:
                await admin.delete_topics(mine)
            return len(mine)
        finally:
            await admin.close()

    try:
        dropped = asyncio.run(drop_topics())
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.projection_schema)))
        log(f"dropped this run's {dropped} topics and schema {settings.projection_schema}")
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the result
        log(f"cleanup of this run's topics/schema failed: {exc!r}")


def stack_info(home: Path) -> Any:
    """Where Kafka and Postgres answer: a stack named by the environment, else the dev stack (started if need be)."""
    from devtools import devstack

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("DATABASE_URL"):  # a stack already running
        # Its pids are not ours to stop; read only to meter their CPU, when its home is named.
        return SimpleNamespace(kafka_bootstrap=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                               database_url=os.environ["DATABASE_URL"], pids=stack_pids())
    return devstack.up(home, start_mail_sink=False, log=lambda *a: None)


def route_cloud_companies(settings: Settings) -> None:
    """Route the SES company and the SendGrid/Mailgun companies to the cloud, from their first learner."""
    from offload.client import change_company_settings

    for company, provider in {CLOUD_COMPANY: "ses", **HTTP_COMPANIES}.items():
        asyncio.run(change_company_settings(settings, company, cloud_enabled=True, use_cloud_for_emails=True,
                                            user_threshold=1, email_provider=provider, changed_by="bench"))


def wait_for_company_settings(workers: list[Any], companies: tuple[int, ...], timeout: float = 60) -> None:
    """Until some worker has applied each company's settings (only the owner of the settings partition logs it)."""
    deadline = time.monotonic() + timeout
    while not all(any(f"company {c} settings" in w.log_text() for w in workers) for c in companies):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no worker applied the settings of companies {companies} within {timeout:.0f} s")
        time.sleep(0.2)
