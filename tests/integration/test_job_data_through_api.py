"""Through the HTTP API, against the real worker, projector, broker and database: what a job says is what
happens. A job's chosen callback key signs its callbacks; a provider's bounce report moves the bounce rate
the API shows; a job whose template cannot work for anyone is refused with 422 before Kafka sees it."""

from __future__ import annotations

import json
import time

import pytest

from content.email import message_id_for
from tests.support.api import ApiServer, SignedClient, api_keys, send, without_api_keys
from tests.support.moodle_receiver import MoodleReceiver
from tests.support.observe import records, wait_for
from tests.unit.test_webhooks import mailgun_signature

pytestmark = pytest.mark.integration

K7 = "k7-secret-0123456789abcdef"
CB_A, CB_B = "callback-a-secret-0123456789abcdef", "callback-b-secret-0123456789abcdef"
MAILGUN_KEY = "mailgun-signing-key-0123456789"


def completed(client: SignedClient, job_id: str):
    def check():
        reply = client.get(f"/api/v1/jobs/{job_id}")
        return reply.body if reply.status == 200 and reply.body["status"] == "completed" else None

    return wait_for(check, timeout=90, what=f"job {job_id} to complete, read through the API")


def test_the_callback_key_a_job_names_signs_its_callbacks(settings_factory, topics_for, processes, job_factory,
                                                          mail_sink):
    # Two callback keys for company 7; without a choice the key listed last signs (Settings.callback_key_for).
    settings = settings_factory(
        smtp_port=mail_sink.port, api_keys=api_keys(k7=(K7, 7)), api_allow_private_callbacks=True,
        callback_keys=json.dumps({"cb-a": {"secret": CB_A, "company_id": 7},
                                  "cb-b": {"secret": CB_B, "company_id": 7}}),
        callback_check_interval=0.2,
    )
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    with MoodleReceiver({"cb-a": CB_A, "cb-b": CB_B}) as moodle, ApiServer(settings) as server:
        k7 = SignedClient(server.base_url, "k7", K7)
        chosen = job_factory("cbkey-chosen", 3, callback_url=moodle.url("/cb/chosen"), callback_key_id="cb-a")
        default = job_factory("cbkey-default", 3, callback_url=moodle.url("/cb/default"))
        assert k7.post("/api/v1/jobs", chosen).status == 202
        assert k7.post("/api/v1/jobs", default).status == 202

        def both_completed():
            done = {r.path for r in moodle.delivered() if r.json["event"] == "completed"}
            return done if done == {"/cb/chosen", "/cb/default"} else None

        wait_for(both_completed, timeout=120, what="the completed callback of both jobs")

    assert moodle.received and all(r.valid for r in moodle.received)
    keys = {(r.path, r.headers["X-Offload-Key-Id"]) for r in moodle.received}
    assert keys == {("/cb/chosen", "cb-a"), ("/cb/default", "cb-b")}


def test_a_bounce_report_moves_the_bounce_rate_the_api_shows(settings_factory, topics_for, processes,
                                                             job_factory, mail_sink):
    settings = settings_factory(smtp_port=mail_sink.port, api_keys=api_keys(k7=(K7, 7)),
                                webhook_mailgun_signing_key=MAILGUN_KEY)
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    processes("projector", without_api_keys(settings))
    with ApiServer(settings) as server:
        k7 = SignedClient(server.base_url, "k7", K7)
        assert k7.post("/api/v1/jobs", job_factory("bounce-job", 4, callback_url=None)).status == 202
        done = completed(k7, "bounce-job")
        assert done["progress"]["sent"] == 4
        assert done["delivery"] == {"delivered": 0, "bounced": 0, "complained": 0, "bounce_rate": 0.0}

        bounced_id = message_id_for("bounce-job", 2, settings.message_id_domain)
        report = {"signature": mailgun_signature(MAILGUN_KEY, str(int(time.time())), "mg-bounce-token-1"),
                  "event-data": {"event": "failed", "severity": "permanent", "id": "mg-bounce-1",
                                 "recipient": "learner2@example.org", "timestamp": time.time(),
                                 "reason": "bounce", "delivery-status": {"message": "550 5.1.1 no such user"},
                                 "message": {"headers": {"message-id": bounced_id.strip("<>")}}}}
        reply = send(server.base_url, "POST", "/webhooks/mailgun", json.dumps(report).encode(),
                     {"Content-Type": "application/json"})
        assert (reply.status, reply.body) == (200, {"published": 1, "unmatched": 0})

        def bounce_counted():
            body = k7.get("/api/v1/jobs/bounce-job").body
            return body["delivery"] if body["delivery"]["bounced"] else None

        delivery = wait_for(bounce_counted, timeout=60, what="the bounce in the job's delivery figures")
    assert delivery == {"delivered": 0, "bounced": 1, "complained": 0, "bounce_rate": 0.25}


def test_a_job_whose_template_cannot_work_is_refused_before_kafka(settings_factory, topics_for, job_factory):
    settings = settings_factory(api_keys=api_keys(k7=(K7, 7)))
    topics_for(settings)
    with ApiServer(settings) as server:
        k7 = SignedClient(server.base_url, "k7", K7)
        unknown = k7.post("/api/v1/jobs", job_factory("tpl-unknown", 5, template_id="course_completion_reminder"))
        assert (unknown.status, unknown.code) == (422, "unknown_template")
        assert [(p["code"], p["field"]) for p in unknown.body["error"]["problems"]] == [
            ("unknown_template", "template_id")]
        assert "course_completion_reminder" in unknown.body["error"]["message"]

        missing = k7.post("/api/v1/jobs", job_factory("tpl-missing", 5, template_data={"due_date": "tomorrow"}))
        assert (missing.status, missing.code) == (422, "template_data_missing")
        assert missing.body["error"]["problems"][0]["missing"] == ["course_name", "course_url"]

        certificate = k7.post("/api/v1/jobs", job_factory("tpl-cert", 5, job_type="certificate",
                                                           template_id="course_completion",
                                                           template_data={"course_name": "Fire Safety 101"}))
        assert (certificate.status, certificate.code) == (422, "template_data_missing")
        assert certificate.body["error"]["problems"][0]["missing"] == ["completion_date"]

        # A bad address is one learner's problem: that job is taken.
        one_bad = job_factory("tpl-one-bad-address", 5, callback_url=None)
        one_bad["recipients"][1]["email"] = "not an address"
        assert k7.post("/api/v1/jobs", one_bad).status == 202

    handed_over = [event.job_id for _, event in records(settings, "job-requests")]
    assert handed_over == ["tpl-one-bad-address"]
