"""The foundation's thread end to end: settings topic -> worker routing -> JobAccepted -> jobs row in Postgres,
then a projector restart that applies nothing twice. Real broker, real database, real processes."""

from __future__ import annotations

import asyncio
import re

import pytest

from offload.client import change_company_settings, submit_job
from schemas.events import JobAccepted, JobRejected
from tests.support.moto_server import verify_ses_sender
from tests.support.observe import events, query, wait_for, wait_for_job

pytestmark = pytest.mark.integration


def test_jobs_are_routed_by_company_settings_and_projected_once(
    settings_factory, topics_for, processes, job_factory, mail_sink, moto
):
    settings = settings_factory(smtp_port=mail_sink.port, aws_endpoint_url=moto.endpoint_url,
                                aws_access_key_id="testing", aws_secret_access_key="testing")
    topics_for(settings)
    verify_ses_sender(moto, settings.mail_from)
    asyncio.run(change_company_settings(settings, 7, cloud_enabled=True, use_cloud_for_emails=True,
                                        user_threshold=5, email_provider="ses", changed_by="admin"))
    worker = processes("worker", settings)
    projector = processes("projector", settings)
    worker.wait_for_log("company 7 settings", timeout=30)

    asyncio.run(submit_job(settings, job_factory("below-threshold", 4)))
    asyncio.run(submit_job(settings, job_factory("at-threshold", 5, start=100)))
    asyncio.run(submit_job(settings, job_factory("no-settings", 5, company_id=99, start=200)))

    below = wait_for_job(settings, "below-threshold")
    at = wait_for_job(settings, "at-threshold")
    none = wait_for_job(settings, "no-settings")
    assert (below["route"], below["provider"]) == ("local", "smtp")
    assert "below company 7's threshold of 5" in below["route_reason"]
    assert (at["route"], at["provider"]) == ("cloud", "ses")
    assert "at or above the threshold of 5" in at["route_reason"]
    assert none["route"] == "local" and "company 99 has no cloud settings" in none["route_reason"]
    for row, total in ((below, 4), (at, 5), (none, 5)):
        assert (row["total_recipients"], row["succeeded"], row["failed"]) == (total, total, 0)

    accepted = {e.job_id: e for e in events(settings, "jobs") if isinstance(e, JobAccepted)}
    assert accepted["at-threshold"].route == "cloud" and accepted["at-threshold"].batch_count == 1

    # Restart: the projector resumes at the offsets it stored with its rows, so it applies nothing again.
    projector.stop()
    assert "projected" in projector.log_text()
    at_stop = {(r["topic"], r["partition"]): r["next_offset"]
               for r in query(settings, "SELECT topic, partition, next_offset FROM projection_offsets")}
    counters_at_stop = query(settings, "SELECT job_id, succeeded, failed, batches_done FROM jobs ORDER BY 1")
    audit_at_stop = query(settings, "SELECT count(*) AS n FROM audit_log")[0]["n"]
    projector = processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("after-restart", 3, start=300)))
    wait_for_job(settings, "after-restart")
    projector.stop()
    applied_after_restart = int(re.findall(r"projected (\d+) events", projector.log_text())[-1])
    after = {(r["topic"], r["partition"]): r["next_offset"]
             for r in query(settings, "SELECT topic, partition, next_offset FROM projection_offsets")}
    read_after_restart = sum(offset - at_stop.get(tp, 0) for tp, offset in after.items())
    assert applied_after_restart == read_after_restart, "the restarted projector did not resume where it stopped"
    new_events = [e for topic in ("jobs", "batches", "outcomes") for e in events(settings, topic)
                  if getattr(e, "job_id", None) == "after-restart"]
    # accepted, batch, batch locations, 3 sent, batch done, completed
    assert applied_after_restart >= len(new_events) == 8
    assert query(settings, "SELECT job_id, succeeded, failed, batches_done FROM jobs WHERE job_id <> 'after-restart' "
                           "ORDER BY 1") == counters_at_stop
    # accepted, batch locations, completed
    assert query(settings, "SELECT count(*) AS n FROM audit_log")[0]["n"] == audit_at_stop + 3
    for tp, offset in at_stop.items():
        assert after[tp] >= offset


def test_a_malformed_job_is_rejected_with_every_problem_and_junk_is_dead_lettered(
    settings_factory, topics_for, processes, mail_sink
):
    settings = settings_factory(smtp_port=mail_sink.port)
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings)
    bad = {"job_id": "bad-job", "type": "fax", "company_id": 3, "recipients": [], "template_id": "../etc"}
    asyncio.run(submit_job(settings, bad))

    from eventlog.publisher import EventPublisher
    from schemas.envelope import Record

    async def send_junk() -> None:
        publisher = EventPublisher(settings, source="test")
        await (await publisher.send_record(Record("job-requests", b"junk", b"\xff not json", [])))
        await publisher.stop()

    asyncio.run(send_junk())
    row = wait_for_job(settings, "bad-job", status="rejected")
    fields = {p["field"] for p in row["problems"]}
    assert {"type", "recipients", "template_id"} <= fields
    rejected = [e for e in events(settings, "jobs") if isinstance(e, JobRejected)]
    assert [e.job_id for e in rejected] == ["bad-job"]
    dead = wait_for(lambda: events(settings, "dead-letters"), timeout=30, what="a dead letter")
    assert dead[0].stage == "route-jobs" and "not JSON" in dead[0].error
    import base64

    assert base64.b64decode(dead[0].value_b64) == b"\xff not json"
