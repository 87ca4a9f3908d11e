"""Jobs of companies set to SendGrid or Mailgun, through the real worker and projector into local API servers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from content.email import EmailRenderer, TemplateStore
from devtools.provider_servers import MailgunServer, SendGridServer
from offload.client import change_company_settings, submit_job
from schemas.events import JobCompleted, JobFellBackToLocal, JobOverBudget, Recipient
from streams.handlers.email_batches import compose_email
from tests.integration.test_pacing import assert_never_faster_than
from tests.support.observe import events, query, wait_for_job
from tests.support.routing import start_routed_to

pytestmark = pytest.mark.integration
SG_KEY = "SG.job-test-key-abcdef"
MG_KEY = "key-job-test-0123456789"
DOMAIN = "mg.example.org"


@pytest.fixture(params=["sendgrid", "mailgun"])
def api_server(request: pytest.FixtureRequest) -> Iterator[SendGridServer | MailgunServer]:
    server = SendGridServer(api_key=SG_KEY) if request.param == "sendgrid" else MailgunServer(MG_KEY, DOMAIN)
    with server as running:
        yield running


def provider_settings(server: SendGridServer | MailgunServer, *, key: str | None = None) -> dict:
    if isinstance(server, SendGridServer):
        return {"sendgrid_api_key": key or SG_KEY, "sendgrid_base_url": server.base_url}
    return {"mailgun_api_key": key or MG_KEY, "mailgun_domain": DOMAIN, "mailgun_base_url": server.base_url}


def test_a_company_set_to_the_provider_gets_its_job_sent_through_its_api(
    settings_factory, topics_for, processes, job_factory, mail_sink, api_server
):
    provider = api_server.name
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=50, **provider_settings(api_server))
    start_routed_to(provider, settings, topics_for, processes)
    payload = job_factory(f"via-{provider}", 120)
    payload["recipients"][7]["email"] = "idn.learner@bücher.de"  # the API gets the domain as IDNA, as To: has it
    asyncio.run(submit_job(settings, payload))

    job = wait_for_job(settings, f"via-{provider}")
    assert (job["route"], job["provider"], job["succeeded"], job["failed"], job["fell_back"]) == (
        "cloud", provider, 120, 0, False)
    assert sorted(c.recipients for c in api_server.calls) == [20, 50, 50]  # one call per batch
    received = api_server.by_recipient()
    renderer = EmailRenderer(TemplateStore(None))
    rows = {r["userid"]: r for r in query(settings, "SELECT * FROM job_recipients WHERE job_id = %s",
                                          (f"via-{provider}",))}
    assert "idn.learner@bücher.de" not in received
    for learner in payload["recipients"]:
        (got,) = received[learner["email"].replace("@bücher.de", "@xn--bcher-kva.de")]
        own = compose_email(settings, renderer, job_id=f"via-{provider}", template_id="course_reminder",
                            template_data=payload["template_data"], recipient=Recipient(**learner))
        assert (got.subject, got.text, got.html) == (own.subject, own.text, own.html)
        assert f"First{learner['userid']}" in got.text
        row = rows[learner["userid"]]
        assert (row["status"], row["provider"]) == ("sent", provider) and row["provider_message_id"]
        assert got.message_id == row["message_id"]
    assert mail_sink.count() == 0 and not [e for e in events(settings, "jobs") if isinstance(e, JobFellBackToLocal)]

    price = {"sendgrid": 0.90, "mailgun": 0.70}[provider]
    (completed,) = [e for e in events(settings, "jobs") if isinstance(e, JobCompleted)]
    assert (completed.estimated_cost, completed.currency) == (pytest.approx(120 * price / 1000), "USD")
    assert job["estimated_cost"] == pytest.approx(120 * price / 1000) and job["currency"] == "USD"
    assert job["pacing"] == f"{provider}: not paced"


def test_a_company_cap_paces_its_job_and_the_job_finishes(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    with SendGridServer(api_key=SG_KEY) as server:
        settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=40, company_rate_limits={7: 20},
                                    **provider_settings(server))
        start_routed_to("sendgrid", settings, topics_for, processes)
        asyncio.run(submit_job(settings, job_factory("capped", 80)))
        job = wait_for_job(settings, "capped")
        assert (job["succeeded"], job["fell_back"]) == (80, False)
        assert len(server.by_recipient()) == 80 and len(server.delivered) == 80
        assert max(c.recipients for c in server.calls) <= 20
        assert_never_faster_than(server.calls, 20)
        assert job["pacing"] == "paced by company 7 cap 20/s"


def test_a_revoked_key_falls_back_to_local_and_says_why(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    with MailgunServer(MG_KEY, DOMAIN) as server:
        settings = settings_factory(smtp_port=mail_sink.port, max_attempts=2,
                                    **provider_settings(server, key="key-revoked"))
        start_routed_to("mailgun", settings, topics_for, processes)
        asyncio.run(submit_job(settings, job_factory("revoked", 10)))
        job = wait_for_job(settings, "revoked")
        assert (job["route"], job["succeeded"], job["fell_back"]) == ("cloud", 10, True)
        assert "mailgun refused the credentials (401)" in job["fallback_reason"]
        assert "key-revoked" not in job["fallback_reason"]
        assert server.delivered == [] and mail_sink.count() == 10


def test_a_job_that_would_pass_the_monthly_budget_goes_local_and_says_so(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    with SendGridServer(api_key=SG_KEY) as server:
        settings = settings_factory(smtp_port=mail_sink.port, **provider_settings(server))
        topics_for(settings)
        # SendGrid's default price: $0.90 per 1,000, so 50 learners ~ $0.045 and 10 more would make $0.054.
        asyncio.run(change_company_settings(settings, 7, cloud_enabled=True, use_cloud_for_emails=True,
                                            user_threshold=1, email_provider="sendgrid", monthly_budget=0.05))
        processes("worker", settings).wait_for_log("company 7 settings", timeout=30)
        processes("projector", settings)
        asyncio.run(submit_job(settings, job_factory("within", 50)))
        within = wait_for_job(settings, "within")
        asyncio.run(submit_job(settings, job_factory("past", 10, start=100)))
        past = wait_for_job(settings, "past")

        assert (within["route"], within["provider"], within["succeeded"]) == ("cloud", "sendgrid", 50)
        assert (past["route"], past["provider"], past["succeeded"]) == ("local", "smtp", 10)
        assert "monthly budget 0.05 USD" in past["route_reason"] and "routed local" in past["route_reason"]
        (over,) = [e for e in events(settings, "jobs") if isinstance(e, JobOverBudget)]
        assert (over.job_id, over.action, over.spent, over.estimated_cost) == (
            "past", "routed_local", pytest.approx(0.045), pytest.approx(0.009))
        assert len(server.delivered) == 50 and mail_sink.count() == 10
