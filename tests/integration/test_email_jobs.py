"""Email jobs through the real worker and projector into a real SMTP server and moto's SES endpoint."""

from __future__ import annotations

import asyncio
import email
from email.header import decode_header, make_header
from email.message import Message

import pytest

from content.email import message_id_for
from offload.client import submit_job
from schemas.events import JobFellBackToLocal, JobRejected, RecipientSent
from tests.support.email import closed_port
from tests.support.moto_server import verify_ses_sender
from tests.support.observe import events, query, wait_for_job
from tests.support.routing import start_routed_to

pytestmark = pytest.mark.integration


def text_of(message: Message) -> str:
    part = next(p for p in message.walk() if p.get_content_type() == "text/plain")
    return part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")


def html_of(message: Message) -> str:
    part = next(p for p in message.walk() if p.get_content_type() == "text/html")
    return part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")


def recipients_rows(settings, job_id: str) -> dict[int, dict]:
    return {r["userid"]: r for r in query(settings, "SELECT * FROM job_recipients WHERE job_id = %s", (job_id,))}


def test_every_learner_gets_exactly_their_own_message_and_bad_input_is_recorded(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=50)
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings)
    payload = job_factory("email-exact", 230)
    learners = payload["recipients"]
    learners[0].update(firstname="Zoë", lastname="Ångström")
    learners[1].update(firstname="Иван", lastname="Петров")
    learners[2].update(firstname="Eve\r\nBcc: victim@example.org", lastname="X\nTo: victim@example.org")
    learners[3].update(firstname="<script>alert(1)</script>")
    learners[4].update(email="idn.learner@bücher.de")  # an internationalised domain: sent, as IDNA
    learners.append({"userid": 9001, "email": "no-at-sign.example.org", "firstname": "Bad", "lastname": "Address"})
    learners.append(dict(learners[5]))  # the same learner twice is served once
    asyncio.run(submit_job(settings, payload))

    job = wait_for_job(settings, "email-exact")
    assert (job["total_recipients"], job["succeeded"], job["failed"], job["duplicates_removed"]) == (231, 230, 1, 1)
    assert job["batch_count"] == job["batches_done"] == 5

    counts = mail_sink.recipient_counts()
    assert "victim@example.org" not in counts, "a name injected a header"
    envelope = {r["email"]: r["email"] for r in learners[:230]} | {"idn.learner@bücher.de": "idn.learner@xn--bcher-kva.de"}
    assert sorted(counts) == sorted(envelope.values())
    assert set(counts.values()) == {1}
    by_address = mail_sink.by_recipient()
    for learner in learners[:230]:
        (received,) = by_address[envelope[learner["email"]]]
        message = email.message_from_bytes(received.raw)
        assert message["Message-ID"] == message_id_for("email-exact", learner["userid"], settings.message_id_domain,
                                                     key=settings.message_id_key())
        assert str(make_header(decode_header(message["Subject"]))) == "Reminder: Fire Safety 101 is due 2026-12-31"
        if "\n" not in learner["firstname"] and "<" not in learner["firstname"]:
            assert text_of(message).splitlines()[0] == f"Dear {learner['firstname']},"
        assert learner["email"] in text_of(message)
    injected = email.message_from_bytes(by_address[learners[3]["email"]][0].raw)
    assert "<script>" not in html_of(injected) and "&lt;script&gt;" in html_of(injected)
    assert "Zoë" in text_of(email.message_from_bytes(by_address[learners[0]["email"]][0].raw))

    rows = recipients_rows(settings, "email-exact")
    assert len(rows) == 231
    assert rows[9001]["status"] == "failed" and rows[9001]["retryable"] is False
    assert rows[9001]["error_message"].startswith("unusable address")
    sent = [r for r in rows.values() if r["status"] == "sent"]
    assert len(sent) == 230 and all(r["provider"] == "smtp" and r["provider_message_id"] for r in sent)
    assert all(r["attempts"] == 1 and r["timesent"] is not None for r in sent)


def test_transient_smtp_errors_are_retried_and_permanent_ones_recorded(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    settings = settings_factory(smtp_port=mail_sink.port, max_attempts=4)
    topics_for(settings)
    mail_sink.fail_next("learner2@example.org", code=450, times=2)  # transient: retried, attempts counted
    mail_sink.fail_next("learner4@example.org", code=451, times=2)  # back-pressure: retried, attempts not spent
    mail_sink.throttle_next(3)
    mail_sink.reject("learner3@example.org", code=550)
    processes("worker", settings)
    processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("email-retry", 20)))

    job = wait_for_job(settings, "email-retry")
    assert (job["succeeded"], job["failed"]) == (19, 1)
    rows = recipients_rows(settings, "email-retry")
    assert rows[2]["status"] == "sent" and rows[2]["attempts"] == 3
    assert rows[4]["status"] == "sent" and rows[4]["attempts"] == 1
    assert rows[3]["status"] == "failed" and rows[3]["retryable"] is False and "550" in rows[3]["error_message"]
    assert mail_sink.recipient_counts()["learner2@example.org"] == 1
    assert mail_sink.recipient_counts()["learner4@example.org"] == 1
    assert "learner3@example.org" not in mail_sink.recipient_counts()


def test_a_template_no_learner_can_render_rejects_the_job_and_one_learner_short_fails_only_that_learner(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    settings = settings_factory(smtp_port=mail_sink.port)
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings)
    # Produced straight to Kafka (no API in front): the route agent refuses it as a whole.
    asyncio.run(submit_job(settings, job_factory("email-render", 3, template_data={"due_date": "tomorrow"})))
    asyncio.run(submit_job(settings, job_factory("email-no-template", 3, template_id="course_completion_reminder")))
    asyncio.run(submit_job(settings, job_factory("cert-no-template", 3, job_type="certificate",
                                                 template_id="no_such_certificate",
                                                 template_data={"course_name": "C", "completion_date": "2026-11-20"})))
    # course_name per learner, and learner 3 lacks it: only that learner fails.
    partial = job_factory("email-partial", 3, template_data={"due_date": "tomorrow", "course_url": "https://c"})
    for recipient in partial["recipients"][:2]:
        recipient["course_name"] = "Fire Safety 101"
    asyncio.run(submit_job(settings, partial))

    missing = wait_for_job(settings, "email-render", status="rejected")
    assert [(p["code"], p["field"]) for p in missing["problems"]] == [("template_data_missing", "template_data")]
    assert "course_name, course_url" in missing["problems"][0]["message"]
    unknown = wait_for_job(settings, "email-no-template", status="rejected")
    assert [p["code"] for p in unknown["problems"]] == ["unknown_template"]
    assert "course_completion_reminder" in unknown["error_message"]
    certificate = wait_for_job(settings, "cert-no-template", status="rejected")
    assert [(p["code"], p["field"]) for p in certificate["problems"]] == [("unknown_template", "template_id")]
    rejected = [e for e in events(settings, "jobs") if isinstance(e, JobRejected)]
    assert {e.job_id for e in rejected} == {"email-render", "email-no-template", "cert-no-template"}

    job = wait_for_job(settings, "email-partial")
    assert (job["succeeded"], job["failed"]) == (2, 1)
    rows = recipients_rows(settings, "email-partial")
    assert rows[3]["status"] == "failed" and "course_name" in rows[3]["error_message"]
    # No learner row of a rejected job, and nothing sent for one.
    assert query(settings, "SELECT count(*) AS n FROM job_recipients WHERE job_id IN ('email-render', "
                           "'email-no-template', 'cert-no-template')")[0]["n"] == 0
    assert mail_sink.count() == 2


def test_cloud_jobs_go_through_ses_and_fall_back_to_smtp_when_it_is_unreachable(
    settings_factory, topics_for, processes, job_factory, mail_sink, moto
):
    moto.reset()
    # moto's quota is fixed at 1/s; pacing to it is tested in test_pacing.py, not here.
    common = dict(smtp_port=mail_sink.port, aws_access_key_id="testing", aws_secret_access_key="testing",
                  max_attempts=2, ses_pace_to_account=False)
    ses = settings_factory(aws_endpoint_url=moto.endpoint_url, **common)
    down = settings_factory(aws_endpoint_url=f"http://127.0.0.1:{closed_port()}", **common)
    verify_ses_sender(moto, ses.mail_from)
    for settings in (ses, down):
        start_routed_to("ses", settings, topics_for, processes)
    asyncio.run(submit_job(ses, job_factory("via-ses", 30)))
    asyncio.run(submit_job(down, job_factory("ses-down", 30, start=500)))

    job = wait_for_job(ses, "via-ses")
    assert (job["route"], job["provider"], job["succeeded"], job["fell_back"]) == ("cloud", "ses", 30, False)
    sent_by_moto = [m for m in moto.sent_emails() if "X-Offload-Job: via-ses" in m.get("raw_data", "")]
    assert len(sent_by_moto) == 30
    outcomes = [e for e in events(ses, "outcomes") if isinstance(e, RecipientSent)]
    assert {e.provider for e in outcomes} == {"ses"} and len({e.userid for e in outcomes}) == 30
    assert not any(a.startswith("learner1@") for a in mail_sink.recipient_counts())

    fell = wait_for_job(down, "ses-down")
    assert (fell["route"], fell["succeeded"], fell["fell_back"]) == ("cloud", 30, True)
    assert "ses" in fell["fallback_reason"]
    assert [e for e in events(down, "jobs") if isinstance(e, JobFellBackToLocal)]
    counts = mail_sink.recipient_counts()
    assert all(counts[f"learner{i}@example.org"] == 1 for i in range(500, 530))
    assert {r["provider"] for r in recipients_rows(down, "ses-down").values()} == {"smtp"}


def test_the_same_job_id_submitted_twice_is_served_once(settings_factory, topics_for, processes, job_factory,
                                                         mail_sink):
    settings = settings_factory(smtp_port=mail_sink.port)
    topics_for(settings)
    worker = processes("worker", settings)
    processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("twice", 10)))
    wait_for_job(settings, "twice")
    asyncio.run(submit_job(settings, job_factory("twice", 10)))  # Moodle retried after a timeout
    worker.wait_for_log("repeated request ignored", timeout=30)

    accepted = [e for e in events(settings, "jobs") if getattr(e, "job_id", None) == "twice"
                and type(e).__name__ == "JobAccepted"]
    assert len(accepted) == 1
    assert len([e for e in events(settings, "batches")]) == 1
    assert set(mail_sink.recipient_counts().values()) == {1} and mail_sink.count() == 10
