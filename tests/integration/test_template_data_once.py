"""Issue 11 finding 1 in the worker: a job over the template_data cap is rejected with a code that says why,
and batches written before batches referred to the job request (template_data inline) are still served."""

from __future__ import annotations

import asyncio
import email
import email.policy

import pytest

from eventlog.publisher import EventPublisher
from offload.client import submit_job
from schemas.events import BatchDispatched, BatchesDispatched, JobAccepted, JobRejected, Recipient
from tests.support.api import without_api_keys
from tests.support.observe import events, wait_for

pytestmark = pytest.mark.integration


async def _legacy_batch(settings, marker: str) -> None:
    """What route-jobs wrote before finding 1: the whole template_data in the batch, no template_data_at."""
    recipients = [Recipient(userid=i, email=f"legacy{i}@example.org", firstname=f"F{i}") for i in (1, 2)]
    publisher = EventPublisher(settings, source="urn:manireports:offload:test")
    try:
        await publisher.send_and_wait(JobAccepted(
            job_id="legacy-batch", type="email", company_id=7, route="local", reason="test", provider="smtp",
            template_id="course_reminder", total_recipients=2, batch_size=10, batch_count=1))
        locations = await publisher.send_all([BatchDispatched(
            job_id="legacy-batch", run=0, batch_no=0, batch_count=1, type="email", company_id=7, route="local",
            provider="smtp", template_id="course_reminder", recipients=recipients,
            template_data={"course_name": marker, "due_date": "2026-12-31",
                           "course_url": "https://moodle.example.org/course/view.php?id=7"})])
        await publisher.send_and_wait(BatchesDispatched(job_id="legacy-batch", run=0, locations=locations))
    finally:
        await publisher.stop()


def test_the_worker_rejects_oversized_template_data_with_a_code_and_still_serves_batches_carrying_it(
        settings_factory, topics_for, processes, job_factory, mail_sink):
    settings = settings_factory(smtp_port=mail_sink.port, template_data_max_bytes=4096)
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    oversized = job_factory("data-over-cap", 2)
    oversized["template_data"]["course_name"] = "x" * 5000
    asyncio.run(submit_job(settings, oversized))  # straight to Kafka: the worker must refuse it on its own
    marker = "Legacy Inline Course 42"
    asyncio.run(_legacy_batch(settings, marker))

    def rejected():
        return [e for e in events(settings, "jobs") if isinstance(e, JobRejected) and e.job_id == "data-over-cap"]

    (refusal,) = wait_for(rejected, timeout=120, what="the oversized job's JobRejected")
    (problem,) = refusal.problems
    assert (problem.field, problem.code) == ("template_data", "template_data_too_large")
    assert "4096" in problem.message
    wait_for(lambda: len(mail_sink.recipient_counts()) == 2 or None, timeout=120, what="the legacy batch's mail")
    assert set(mail_sink.recipient_counts()) == {"legacy1@example.org", "legacy2@example.org"}
    for messages in mail_sink.by_recipient().values():
        (message,) = messages
        parsed = email.message_from_bytes(message.raw, policy=email.policy.default)
        assert marker in parsed.get_body(preferencelist=("plain",)).get_content()
