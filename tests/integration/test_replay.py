"""Replay rebuilds every read model from offset 0 into a fresh schema, equal to the live one row for row;
the export gives analysts the same log as CSV."""

from __future__ import annotations

import asyncio
import csv

import pytest

from eventlog.publisher import EventPublisher
from offload.client import change_company_settings, submit_job
from offload.logtools import EventFilter, export_csv
from offload.replay import replay
from schemas.events import Event, SuppressionAdded
from tests.support.observe import READ_MODEL_TABLES, read_models, wait_for_job

pytestmark = pytest.mark.integration


async def publish(settings, event: Event) -> None:
    publisher = EventPublisher(settings, source="urn:test")
    try:
        await publisher.send_and_wait(event)
    finally:
        await publisher.stop()


def test_replay_rebuilds_the_read_models_row_for_row(settings_factory, topics_for, processes, job_factory,
                                                      mail_sink, tmp_path):
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=40, max_attempts=3)
    topics_for(settings)
    mail_sink.fail_next("learner5@example.org", code=450, times=2)      # retried, then sent
    mail_sink.fail_next("learner6@example.org", code=450, times=5)      # retries exhausted: retryable failure
    mail_sink.reject("learner7@example.org", code=550)                  # permanent failure
    asyncio.run(change_company_settings(settings, 7, cloud_enabled=True, use_cloud_for_emails=False,
                                        user_threshold=10, changed_by="admin"))
    # An entry on another company's suppression list: that read model is rebuilt too; this job is not affected.
    asyncio.run(publish(settings, SuppressionAdded(company_id=9, userid=1, source="manual", reason="replayed too")))
    processes("worker", settings)
    projector = processes("projector", settings)
    payload = job_factory("replay-a", 150)
    payload["recipients"].append({"userid": 999, "email": "broken", "firstname": "No", "lastname": "At"})
    asyncio.run(submit_job(settings, payload))
    asyncio.run(submit_job(settings, job_factory("replay-b", 3, template_data={})))  # rejected: no course_name
    asyncio.run(submit_job(settings, {"job_id": "replay-c", "type": "email"}))       # rejected
    a = wait_for_job(settings, "replay-a")
    wait_for_job(settings, "replay-b", status="rejected")
    wait_for_job(settings, "replay-c", status="rejected")
    assert (a["succeeded"], a["failed"]) == (148, 3)
    projector.stop()

    live = read_models(settings, settings.projection_schema)
    stats = asyncio.run(replay(settings, f"{settings.projection_schema}_replay"))
    rebuilt = read_models(settings, f"{settings.projection_schema}_replay")
    print(f"replayed {stats.events} events in {stats.seconds:.2f} s ({stats.per_second:,.0f} events/s)")

    assert stats.events > 150
    for table in READ_MODEL_TABLES:
        assert live[table], f"{table} is empty: the test proves nothing"
        assert rebuilt[table] == live[table], table
    # Analysts' export: one CSV per event type, one row per event, CloudEvents attributes + flattened data.
    counts = asyncio.run(export_csv(settings, EventFilter(job_id="replay-a"), tmp_path))
    assert counts["recipient.sent.v1"] == 148 and counts["recipient.failed.v1"] == 3
    with (tmp_path / "recipient.failed.v1.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["ce_type"] for r in rows} == {"org.manireports.offload.recipient.failed.v1"}
    assert {r["userid"] for r in rows} == {"6", "7", "999"} and {r["ce_subject"] for r in rows} == {"replay-a"}

    failures = {r["userid"]: r for r in live["job_recipients"] if r["status"] == "failed"}
    assert failures[6]["retryable"] is True and failures[6]["attempts"] == 3
    assert failures[7]["retryable"] is False and failures[999]["attempts"] == 0
