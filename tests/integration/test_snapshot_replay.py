"""A replay from a snapshot needs only the log after it: with the history before the snapshot deleted from the
topics, it still rebuilds the read models row for row; a snapshot older than the log is refused."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete

from eventlog.publisher import EventPublisher
from offload.client import request_retry, submit_job
from offload.replay import replay
from offload.snapshot import SnapshotTooOld, log_beginnings, replay_from_snapshot, take_snapshot
from schemas.events import Event, SuppressionAdded, SuppressionRemoved, TemplatePublished
from tests.support.observe import READ_MODEL_TABLES, query, read_models, wait_for, wait_for_job

pytestmark = pytest.mark.integration


async def delete_history(settings, before: dict[tuple[str, int], int]) -> None:
    """What retention does to old segments: every record before the given offsets is gone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(t, p): RecordsToDelete(o)
                                    for (t, p), o in before.items() if o})
    finally:
        await admin.close()


async def publish(settings, *events: Event) -> None:
    publisher = EventPublisher(settings, source="urn:test:admin")
    await publisher.start()
    try:
        for event in events:
            await publisher.send_and_wait(event)
    finally:
        await publisher.stop()


def template(version: int) -> TemplatePublished:
    """A company template no job of this test names (so nothing renders it): what the snapshot must carry."""
    return TemplatePublished(company_id=7, template_id="snapshot_notice", version=version,
                             subject_template=f"Notice v{version}", text=f"Hello {{{{ firstname }}}} v{version}\n",
                             sha256=f"{version:064x}", published_by="admin-key")


# The deliverability read models, compared besides READ_MODEL_TABLES (ordered by their keys).
LISTS_AND_TEMPLATES = {"suppressions": "company_id, userid, scope",
                       "email_template_versions": "company_id, template_id, version",
                       "email_templates": "company_id, template_id"}


def lists_and_templates(settings, schema: str) -> dict[str, list[dict]]:
    view = settings.model_copy(update={"projection_schema": schema})
    return {table: query(view, f"SELECT * FROM {table} ORDER BY {order}")
            for table, order in LISTS_AND_TEMPLATES.items()}


def test_a_replay_from_a_snapshot_rebuilds_the_read_models_after_the_history_before_it_is_gone(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=40)
    topics_for(settings)
    mail_sink.reject("learner7@example.org")
    processes("worker", settings)
    projector = processes("projector", settings)
    schema = settings.projection_schema
    empty = asyncio.run(take_snapshot(settings, f"{schema}_empty"))
    assert empty.rows["jobs"] == 0

    asyncio.run(submit_job(settings, job_factory("before-a", 120)))
    # Suppression lists and company templates before the snapshot: their records are deleted below too.
    asyncio.run(publish(settings, SuppressionAdded(company_id=7, userid=900, source="manual", reason="asked by phone"),
                        SuppressionAdded(company_id=7, userid=901, source="manual", reason="left the company"),
                        template(1)))
    wait_for_job(settings, "before-a")
    wait_for(lambda: len(query(settings, "SELECT 1 FROM email_template_versions")) == 1
             and len(query(settings, "SELECT 1 FROM suppressions")) == 2, what="list and template projected")
    taken = asyncio.run(take_snapshot(settings, f"{schema}_snap"))  # the projector keeps running meanwhile
    assert taken.rows["jobs"] == 1 and taken.rows["job_recipients"] == 120

    asyncio.run(submit_job(settings, job_factory("after-b", 80, start=1000)))
    asyncio.run(publish(settings, SuppressionRemoved(company_id=7, userid=901, reason="back, asked again"),
                        SuppressionAdded(company_id=7, userid=902, source="manual", reason="asked by email"),
                        template(2)))
    asyncio.run(request_retry(settings, "before-a", only_retryable=False))  # a run after the snapshot
    wait_for_job(settings, "after-b")
    wait_for_job(settings, "before-a", run=1)
    wait_for(lambda: len(query(settings, "SELECT 1 FROM email_template_versions")) == 2
             and len(query(settings, "SELECT 1 FROM suppressions")) == 2, what="later list and template changes")
    projector.stop()
    live = read_models(settings, schema)
    live_lists = lists_and_templates(settings, schema)
    assert [r["userid"] for r in live_lists["suppressions"]] == [900, 902]
    assert [r["latest_version"] for r in live_lists["email_templates"]] == [2]

    # Retention at work: the compacted settings topic keeps its records; every other one loses its history up
    # to where the snapshot stands.
    cut = {place: offset for place, offset in taken.offsets.items()
           if not place[0].endswith("company-settings")}
    asyncio.run(delete_history(settings, cut))
    beginnings = asyncio.run(log_beginnings(settings))
    assert sum(beginnings.values()) >= 120, "nothing was deleted: the test would prove nothing"

    asyncio.run(replay_from_snapshot(settings, f"{schema}_snap", f"{schema}_rebuilt"))
    rebuilt = read_models(settings, f"{schema}_rebuilt")
    for table in ("jobs", "job_recipients", "job_batches", "job_runs", "audit_log"):
        assert live[table], f"{table} is empty: the test proves nothing"
        assert rebuilt[table] == live[table], table
    assert lists_and_templates(settings, f"{schema}_rebuilt") == live_lists

    # From offset 0 the log alone no longer knows the job before the snapshot: only its retry run's learner.
    asyncio.run(replay(settings, f"{schema}_from_zero"))
    from_zero = read_models(settings, f"{schema}_from_zero")
    before = {r["job_id"]: r for r in from_zero["jobs"]}["before-a"]
    assert (before["total_recipients"], before["type"]) == (0, None)  # its JobAccepted is gone
    assert [r["userid"] for r in from_zero["job_recipients"] if r["job_id"] == "before-a"] == [7]
    # ...nor an entry listed before it, nor the template version a job may still render: why docs/retention.md
    # keeps `suppressions` and `templates` forever.
    zero_lists = lists_and_templates(settings, f"{schema}_from_zero")
    assert [r["userid"] for r in zero_lists["suppressions"]] == [902]
    assert [r["version"] for r in zero_lists["email_template_versions"]] == [2]
    # From the empty snapshot (taken before the deleted history) the replay is refused.
    too_old = r"older than the log: .*jobs\[\d\]: snapshot at 0, log starts at"
    with pytest.raises(SnapshotTooOld, match=too_old):
        asyncio.run(replay_from_snapshot(settings, f"{schema}_empty", f"{schema}_too_old"))
    assert "company_cloud_settings" in READ_MODEL_TABLES  # compared by test_replay; empty here
