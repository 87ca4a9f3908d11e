"""The monthly budget's "wait": a cloud job over budget waits, visible and explained, until the budget allows it;
then it goes to the cloud. Real worker and projector, a local SendGrid server, the shared Kafka and Postgres."""

from __future__ import annotations

import asyncio

import pytest

from api.store import progress
from offload.client import cancel_job, submit_job
from schemas.events import JobAccepted, JobCompleted, JobWaitingForBudget
from tests.support.budget import sendgrid_budget_stack
from tests.support.observe import events, wait_for_job

pytestmark = pytest.mark.integration
SG_KEY = "SG.budget-wait-key"


def test_a_job_over_budget_waits_visibly_until_the_budget_is_raised_then_goes_to_the_cloud(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    # SendGrid's default price: $0.90 per 1,000, so 50 learners ~ $0.045 and 10 more would make $0.054.
    with sendgrid_budget_stack(settings_factory, topics_for, processes, mail_sink, api_key=SG_KEY,
                               monthly_budget=0.05) as stack:
        settings, server = stack.settings, stack.sendgrid
        asyncio.run(submit_job(settings, job_factory("within", 50)))
        wait_for_job(settings, "within")
        asyncio.run(submit_job(settings, job_factory("waits", 10, start=100)))
        asyncio.run(submit_job(settings, job_factory("given-up", 10, start=200)))

        waiting = wait_for_job(settings, "waits", status="waiting")
        view = progress(waiting, [])
        assert (view["status"], view["provider"], view["route"], view["progress"]["total"]) == (
            "waiting", "sendgrid", None, 10)
        assert "monthly budget 0.05 USD: spent 0.04" in view["reason"] and "waits until the budget" in view["reason"]
        figures = view["budget_wait"]
        assert (figures["monthly_budget"], figures["spent"], figures["estimated_cost"], figures["provider"]) == (
            0.05, pytest.approx(0.045), pytest.approx(0.009), "sendgrid")
        # The second waiting job is cancelled while it waits: nobody is ever served.
        wait_for_job(settings, "given-up", status="waiting")
        asyncio.run(cancel_job(settings, "given-up"))
        wait_for_job(settings, "given-up", status="cancelled")
        assert len(server.delivered) == 50 and mail_sink.count() == 0  # nothing of the waiting jobs went out

        raised = stack.set_budget(1.0)
        done = wait_for_job(settings, "waits")

        assert (done["route"], done["provider"], done["succeeded"], done["failed"]) == ("cloud", "sendgrid", 10, 0)
        assert "waited for the monthly budget since" in done["route_reason"]
        assert "monthly budget 1.00 USD: spent 0.04, this job ~0.01 on sendgrid fits it now" in done["route_reason"]
        assert progress(done, [])["budget_wait"]["spent"] == pytest.approx(0.045)  # the figures stay on the job
        jobs = events(settings, "jobs")
        (waited,) = [e for e in jobs if isinstance(e, JobWaitingForBudget) and e.job_id == "waits"]
        (accepted,) = [e for e in jobs if isinstance(e, JobAccepted) and e.job_id == "waits"]
        assert waited.waiting_since < raised.changed_at <= accepted.accepted_at  # it went only once allowed
        assert not [e for e in jobs if isinstance(e, JobAccepted) and e.job_id == "given-up"]
        (cancelled,) = [e for e in jobs if isinstance(e, JobCompleted) and e.job_id == "given-up"]
        assert (cancelled.cancelled, cancelled.succeeded, cancelled.total) == (True, 0, 10)
        assert len(server.by_recipient()) == 60 and mail_sink.count() == 0
