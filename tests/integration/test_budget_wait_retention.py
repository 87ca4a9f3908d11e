"""A job that waits for its budget longer than job-requests keeps its request is dropped with a reason, and the
waits after it go on. Real worker and projector, a local SendGrid server, records deleted as retention does."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from eventlog.topics import offsets_of
from offload.client import submit_job
from schemas.events import JobAccepted, JobRejected
from tests.support.budget import sendgrid_budget_stack
from tests.support.observe import events, wait_for_job

pytestmark = pytest.mark.integration
SG_KEY = "SG.budget-retention-key"


async def delete_requests_so_far(settings) -> None:
    """What retention does once a request is older than job-requests keeps records."""
    ends = await offsets_of(settings, ["job-requests"], end=True)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(t, p): RecordsToDelete(o) for (t, p), o in ends.items() if o})
    finally:
        await admin.close()


def test_a_wait_whose_request_retention_deleted_is_rejected_and_the_waits_after_it_still_go(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    # SendGrid's default price: $0.90 per 1,000, so 10 learners ~ $0.009: over a $0.005 budget.
    with sendgrid_budget_stack(settings_factory, topics_for, processes, mail_sink, api_key=SG_KEY,
                               monthly_budget=0.005) as stack:
        settings, server, worker = stack.settings, stack.sendgrid, stack.worker
        asyncio.run(submit_job(settings, job_factory("outlived", 10)))
        wait_for_job(settings, "outlived", status="waiting")
        asyncio.run(delete_requests_so_far(settings))
        asyncio.run(submit_job(settings, job_factory("after-it", 10, start=100)))
        wait_for_job(settings, "after-it", status="waiting")

        row = wait_for_job(settings, "outlived", status="rejected")
        (problem,) = row["problems"]
        assert problem["code"] == "request_expired"
        assert "longer than job-requests keeps requests" in problem["message"]
        assert "is no longer in the log" in problem["message"]
        worker.wait_for_log("job outlived: the job waited for its monthly budget", timeout=30)

        stack.set_budget(1.0)
        done = wait_for_job(settings, "after-it")
        assert (done["route"], done["provider"], done["succeeded"], done["failed"]) == ("cloud", "sendgrid", 10, 0)
        jobs = events(settings, "jobs")
        assert [e.job_id for e in jobs if isinstance(e, JobRejected)] == ["outlived"]
        assert [e.job_id for e in jobs if isinstance(e, JobAccepted)] == ["after-it"]  # the expired one never went
        assert len(server.delivered) == 10 and mail_sink.count() == 0
