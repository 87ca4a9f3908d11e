"""A consumer that is not this Python code (Node.js, clients/node-consumer) reads the jobs and outcomes
topics, validates every record against the committed JSON Schemas, and its per-job summary equals the read
model."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from eventlog.publisher import EventPublisher
from offload.client import cancel_job, change_company_settings, request_retry, submit_job
from schemas import generate, upcasters
from schemas.envelope import encode
from schemas.events import Event, RecipientSent, SuppressionAdded
from tests.integration.analytics_jobs import run_sample_on_own_processes
from tests.support.observe import query, wait_for_job
from tests.support.stack import REPO
from tests.unit.test_schema_evolution import RecipientSentV2, sent_v1_to_v2

pytestmark = pytest.mark.integration

CLIENT = REPO / "clients" / "node-consumer"
CLOSED_PORT = "http://127.0.0.1:9"  # discard: nothing listens, and nothing is sent there
COMPARED = ("status", "type", "company_id", "route", "provider", "template_id", "total_recipients",
            "duplicates_removed", "batch_count", "batches_done", "succeeded", "failed", "suppressed", "delivered",
            "bounced", "complained")


async def publish(settings, event: Event) -> None:
    publisher = EventPublisher(settings, source="urn:manireports:offload:test")
    await publisher.start()
    try:
        await publisher.send_and_wait(event)
    finally:
        await publisher.stop()


def node_consumer(settings, *extra: str, schemas: Path = REPO / "schemas" / "json") -> subprocess.CompletedProcess:
    assert shutil.which("node"), "node is not installed: run scripts/setup.sh"
    if not (CLIENT / "node_modules" / "kafkajs").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CLIENT, check=True,
                       timeout=300)
    return subprocess.run(
        ["node", str(CLIENT / "consumer.js"), "--brokers", settings.kafka_bootstrap_servers,
         "--prefix", settings.topic_prefix, "--schemas", str(schemas), *extra],
        capture_output=True, text=True, timeout=300,
    )


def test_the_node_consumers_per_job_summary_equals_the_read_model(
    settings_factory, topics_for, processes, mail_sink, tmp_path, job_factory
):
    started = []

    def recording(command, settings, **options):
        started.append(process := processes(command, settings, **options))
        return process

    def with_a_cloud_provider(**fields):  # nothing is sent to it: its jobs wait for their budget
        return settings_factory(**fields, sendgrid_api_key="SG.node-consumer", sendgrid_base_url=CLOSED_PORT,
                                budget_recheck_seconds=0.5)  # a cancel of a waiting job is seen at a recheck

    settings, jobs = run_sample_on_own_processes(with_a_cloud_provider, topics_for, recording, mail_sink, tmp_path)
    # A retry run of every failed learner of one job: each is refused again, in run 1 this time.
    retried = next(j for j in jobs if j.refused)
    asyncio.run(request_retry(settings, retried.job_id, only_retryable=False))
    wait_for_job(settings, retried.job_id, run=1)
    # Two cloud jobs over their company's monthly budget wait (no JobAccepted); one is cancelled while it waits.
    asyncio.run(change_company_settings(settings, 11, monthly_budget=0.001, over_budget="wait",
                                        cloud_enabled=True, use_cloud_for_emails=True, user_threshold=1,
                                        email_provider="sendgrid"))
    started[0].wait_for_log("company 11 settings", timeout=60)
    for job_id, start in (("umbrella-waits-1", 9001), ("umbrella-cancelled-1", 9101)):
        asyncio.run(submit_job(settings, job_factory(job_id, 20, company_id=11, start=start)))
        wait_for_job(settings, job_id, status="waiting")
    asyncio.run(cancel_job(settings, "umbrella-cancelled-1"))
    wait_for_job(settings, "umbrella-cancelled-1", status="cancelled")
    # A learner on their company's suppression list is not sent: a RecipientSuppressed outcome.
    asyncio.run(publish(settings, SuppressionAdded(company_id=9, userid=9202, source="manual",
                                                   reason="asked by phone", changed_by="ops")))
    started[0].wait_for_log("suppression list of company 9", timeout=60)
    asyncio.run(submit_job(settings, job_factory("initech-notice-1", 4, company_id=9, start=9201)))
    wait_for_job(settings, "initech-notice-1")

    result = node_consumer(settings)
    assert result.returncode == 0, f"node consumer failed ({result.returncode}):\n{result.stderr[-4000:]}"
    out = json.loads(result.stdout)
    assert out["invalid"] == 0 and out["unknown_types"] == 0
    assert out["valid"] == out["records"] > sum(j.learners for j in jobs)

    expected = {row["job_id"]: {k: row[k] for k in COMPARED} for row in query(settings, "SELECT * FROM jobs")}
    got = {job["job_id"]: {k: job[k] for k in COMPARED} for job in out["jobs"]}
    assert got == expected
    # Not a vacuous match: the read model holds what the sample did.
    assert expected["hooli-bad-1"]["status"] == "rejected"
    assert (expected["umbrella-waits-1"]["status"], expected["umbrella-cancelled-1"]["status"]) == (
        "waiting", "cancelled")
    assert expected["umbrella-waits-1"]["provider"] == "sendgrid"
    assert (expected["initech-notice-1"]["succeeded"], expected["initech-notice-1"]["suppressed"]) == (3, 1)
    assert {j.job_id for j in jobs} | {"hooli-bad-1", "umbrella-waits-1", "umbrella-cancelled-1",
                                      "initech-notice-1"} == set(expected)
    assert sum(r["failed"] for r in expected.values()) == sum(len(j.refused) for j in jobs) > 0
    assert sum(r["bounced"] for r in expected.values()) == sum(list(j.reports.values()).count("bounced")
                                                               for j in jobs) > 0
    assert {j["job_id"]: j["runs"] for j in out["jobs"]}[retried.job_id] == 2
    assert expected[retried.job_id]["batch_count"] > -(-retried.learners // 100)  # run 1's batches count too

    one = json.loads(node_consumer(settings, "--job", retried.job_id).stdout)
    assert [j["job_id"] for j in one["jobs"]] == [retried.job_id]


def test_the_node_consumer_reports_a_record_that_breaks_the_contract(settings_factory, topics_for):
    """A record whose JSON does not match its type's schema is reported and fails the run (exit 1)."""
    settings = settings_factory()
    topics_for(settings)

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            headers = [("ce_specversion", b"1.0"), ("ce_id", b"x-1"), ("ce_source", b"urn:test"),
                       ("ce_type", b"org.manireports.offload.recipient.sent.v1"), ("ce_subject", b"j1"),
                       ("content-type", b"application/json")]
            bad = {"job_id": "j1", "batch_no": 0, "userid": "seven", "email": "a@example.org",
                   "provider": "smtp", "message_id": "<m@x>", "attempts": 1, "sent_at": "yesterday"}
            await producer.send_and_wait(settings.topic("outcomes"), json.dumps(bad).encode(), key=b"j1",
                                         headers=headers)
            await producer.send_and_wait(settings.topic("jobs"), b'{"job_id": "j1"}', key=b"j1")  # no headers
            # A record that matches its schema, but keyed by something else and with a time that is not one.
            good = encode(RecipientSent(job_id="j1", batch_no=0, userid=7, email="a@example.org",
                                        provider="smtp", message_id="<m@x>", attempts=1))
            odd = [(k, b"yesterday" if k == "ce_time" else v) for k, v in good.headers]
            await producer.send_and_wait(settings.topic("outcomes"), good.value, key=b"learner-7", headers=odd)
        finally:
            await producer.stop()

    asyncio.run(produce())
    result = node_consumer(settings)
    assert result.returncode == 1, result.stderr
    out = json.loads(result.stdout)
    assert (out["records"], out["invalid"], out["valid"]) == (3, 3, 0)
    assert "/userid must be integer" in result.stderr and "/sent_at must match format" in result.stderr
    assert "missing CloudEvents header(s) ce_specversion, ce_id, ce_source, ce_type" in result.stderr
    assert 'record key "learner-7" is not the job id j1' in result.stderr
    assert 'ce_time "yesterday" is not an RFC 3339 timestamp' in result.stderr


def test_after_a_version_bump_the_node_consumer_validates_old_records_and_refuses_the_version_it_does_not_know(
    settings_factory, topics_for, tmp_path, monkeypatch
):
    """recipient.sent goes v1 -> v2 (an upcaster, schemas regenerated): the v1 records in the log still
    validate with v1's frozen schema file and are counted; a v2 record is refused, not skipped (the summary
    would print wrong counts as if they were right); a type nobody counts is skipped."""
    monkeypatch.setattr(upcasters, "UPCASTERS", {})
    upcasters.upcaster(RecipientSent.ce_type, RecipientSentV2.ce_type)(sent_v1_to_v2)
    monkeypatch.setattr(generate, "EVENT_TYPES",
                        [RecipientSentV2 if cls is RecipientSent else cls for cls in generate.EVENT_TYPES])
    published = tmp_path / "json"
    published.mkdir()
    for name, text in generate.rendered().items():
        (published / name).write_text(text)
    assert json.loads((published / f"{RecipientSent.ce_type}.schema.json").read_text())["x-superseded-by"] == (
        RecipientSentV2.ce_type)

    settings = settings_factory()
    topics_for(settings)
    fields = dict(job_id="j1", batch_no=0, run=0, email="a@example.org", provider="smtp", message_id="<m@x>")
    v1 = encode(RecipientSent(userid=7, attempts=1, **fields))
    v2 = encode(RecipientSentV2(userid=8, tries=1, **fields))
    new_type = [(k, b"org.manireports.offload.recipient.thanked.v1" if k == "ce_type" else v) for k, v in v1.headers]

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            for value, headers in ((v1.value, v1.headers), (v2.value, v2.headers), (v1.value, new_type)):
                await producer.send_and_wait(settings.topic("outcomes"), value, key=b"j1", headers=headers)
        finally:
            await producer.stop()

    asyncio.run(produce())
    result = node_consumer(settings, schemas=published)
    assert result.returncode == 1, result.stderr
    out = json.loads(result.stdout)
    assert (out["records"], out["valid"], out["unknown_types"], out["unread_versions"]) == (3, 1, 1, 1)
    assert ("the summary counts recipient.sent.v1, not recipient.sent.v2: teach summary.js that version"
            in result.stderr)
    assert out["by_type"] == {"recipient.sent.v1": 1}
    assert [(j["job_id"], j["succeeded"]) for j in out["jobs"]] == [("j1", 1)]
