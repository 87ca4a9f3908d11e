"""The API's hardening against the real broker, database and API processes: replays refused across two API processes,
bodies that never arrive, template_data written once and capped, callback tokens kept out of the log."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from offload.client import submit_job
from schemas.events import BatchDispatched, JobRejected
from tests.support.api import (
    PUBLIC_CALLBACK,
    ApiProcess,
    ApiServer,
    SignedClient,
    api_keys,
    raw_exchange,
    send,
    without_api_keys,
)
from tests.support.moodle_receiver import MoodleReceiver
from tests.support.observe import events, query, records, wait_for, wait_for_job

pytestmark = pytest.mark.integration

K7 = "security-k7-secret-0123456789"
MAILGUN_KEY = "mailgun-signing-key-0123456789"


def test_two_api_processes_refuse_each_others_replays_of_requests_and_webhooks(settings_factory, topics_for,
                                                                              job_factory, tmp_path):
    """Findings 5 and 10: one seen-store in Postgres for signed requests, Mailgun, SendGrid (and SNS)."""
    settings = settings_factory()
    topics_for(settings)
    sendgrid_key = ec.generate_private_key(ec.SECP256R1())
    public_der = sendgrid_key.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    env = {"OFFLOAD_API_KEYS": json.dumps({"k7": {"secret": K7, "company_id": 7}}),
           "OFFLOAD_WEBHOOK_MAILGUN_SIGNING_KEY": MAILGUN_KEY,
           "OFFLOAD_WEBHOOK_SENDGRID_PUBLIC_KEY": base64.b64encode(public_der).decode()}
    with ApiProcess(settings, tmp_path / "a.log", env) as api_a, ApiProcess(settings, tmp_path / "b.log", env) as api_b:
        a, b = api_a.base_url, api_b.base_url
        job = json.dumps(job_factory("replayed-job", 2, callback_url=PUBLIC_CALLBACK)).encode()
        headers = SignedClient(a, "k7", K7).headers("POST", "/api/v1/jobs", job)
        assert send(a, "POST", "/api/v1/jobs", job, headers).status == 202
        replay = send(b, "POST", "/api/v1/jobs", job, headers)
        assert (replay.status, replay.code) == (401, "replayed_request")
        listing = SignedClient(a, "k7", K7).headers("GET", "/api/v1/jobs", b"")
        assert send(b, "GET", "/api/v1/jobs", b"", listing).status == 200
        assert send(a, "GET", "/api/v1/jobs", b"", listing).code == "replayed_request"

        ts, token = str(int(time.time())), "mailgun-token-0001"
        mailgun = json.dumps({"signature": {"timestamp": ts, "token": token, "signature": hmac.new(
            MAILGUN_KEY.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()},
            "event-data": {"event": "delivered", "recipient": "a@example.org"}}).encode()
        json_headers = {"Content-Type": "application/json"}
        assert send(a, "POST", "/webhooks/mailgun", mailgun, json_headers).status == 200
        assert send(b, "POST", "/webhooks/mailgun", mailgun, json_headers).code == "replayed_request"

        body = json.dumps([{"event": "delivered", "email": "a@example.org", "sg_event_id": "e1"}]).encode()
        signature = base64.b64encode(sendgrid_key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
        sg_headers = {**json_headers, "X-Twilio-Email-Event-Webhook-Signature": signature,
                      "X-Twilio-Email-Event-Webhook-Timestamp": ts}
        assert send(b, "POST", "/webhooks/sendgrid", body, sg_headers).status == 200
        assert send(a, "POST", "/webhooks/sendgrid", body, sg_headers).code == "replayed_request"
    assert len(records(settings, "job-requests")) == 1


def test_a_body_that_does_not_arrive_in_time_is_refused_with_408(settings_factory, topics_for):
    """Finding 2: aiohttp put no deadline on reading the body of a signed request."""
    settings = settings_factory(api_keys=api_keys(k7=(K7, 7)), api_body_timeout=1.0)
    topics_for(settings)
    with ApiServer(settings) as server:
        body = b'{"job_id": "slow"}' + b" " * 200
        headers = SignedClient(server.base_url, "k7", K7).headers("POST", "/api/v1/jobs", body)
        head = (f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
        started = time.monotonic()
        answer = raw_exchange(server.port, head, [body[:10]], timeout=20)  # the rest never comes
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"body_timeout" in answer
        assert time.monotonic() - started < 15


def test_template_data_is_written_once_per_job_and_capped_at_the_api_and_the_worker(
        settings_factory, topics_for, processes, job_factory, mail_sink):
    """Finding 1: batches refer to the job request instead of copying template_data; oversized data is refused."""
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=10, api_keys=api_keys(k7=(K7, 7)))
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    marker = "Marker Course " + "z" * 2000  # big enough that 5 copies would show
    job = job_factory("data-once", 45)
    job["template_data"]["course_name"] = marker
    asyncio.run(submit_job(settings, job))
    oversized = job_factory("data-too-big", 3)
    oversized["template_data"]["course_name"] = "x" * (settings.template_data_max_bytes + 1)
    asyncio.run(submit_job(settings, oversized))

    def rejected():
        return [e for e in events(settings, "jobs") if isinstance(e, JobRejected) and e.job_id == "data-too-big"]

    (refusal,) = wait_for(rejected, timeout=120, what="the oversized job's JobRejected")
    assert [p.field for p in refusal.problems] == ["template_data"] and "limit" in refusal.problems[0].message
    wait_for(lambda: len(mail_sink.recipient_counts()) == 45 or None, timeout=120, what="45 messages")
    batches = [(r, e) for r, e in records(settings, "batches") if isinstance(e, BatchDispatched)]
    assert len(batches) == 5
    for record, batch in batches:
        assert batch.template_data == {} and batch.template_data_at is not None
        assert marker.encode() not in record.value
    for messages in mail_sink.by_recipient().values():
        (message,) = messages
        parsed = email.message_from_bytes(message.raw, policy=email.policy.default)
        assert marker in parsed.get_body(preferencelist=("plain",)).get_content()  # read from the job request

    with ApiServer(settings) as server:
        reply = SignedClient(server.base_url, "k7", K7).post(
            "/api/v1/jobs", {**oversized, "job_id": "too-big-api", "callback_url": PUBLIC_CALLBACK})
        assert (reply.status, reply.code) == (422, "template_data_too_large")


def test_a_callback_token_in_the_query_never_enters_the_log_but_moodle_receives_it(
        settings_factory, topics_for, processes, job_factory, mail_sink):
    """Finding 13: the query (e.g. wstoken) is sealed by the API and opened by the worker."""
    cb_key, cb_secret = "moodle-7-cb", "callback-k7-secret-0123456789abcdef"
    settings = settings_factory(smtp_port=mail_sink.port, api_keys=api_keys(k7=(K7, 7)),
                                api_allow_private_callbacks=True, callback_check_interval=0.2,
                                callback_keys=json.dumps({cb_key: {"secret": cb_secret, "company_id": 7}}))
    topics_for(settings)
    token = "WSTOKEN0123456789abcdefSECRET"
    with MoodleReceiver({cb_key: cb_secret}) as moodle:
        processes("worker", without_api_keys(settings))
        processes("projector", without_api_keys(settings))
        url = moodle.url(f"/webservice/rest/server.php?wstoken={token}&wsfunction=local_offload_callback")
        with ApiServer(settings) as server:
            reply = SignedClient(server.base_url, "k7", K7).post("/api/v1/jobs",
                                                                 job_factory("sealed-cb", 3, callback_url=url))
            assert reply.status == 202
        wait_for(lambda: [r for r in moodle.delivered() if r.json["event"] == "completed"] or None, timeout=120,
                 what="the completed callback")
        wait_for_job(settings, "sealed-cb")
    assert all(r.valid and f"wstoken={token}" in r.path for r in moodle.received)
    for topic in ("job-requests", "jobs", "callbacks"):
        for record, _event in records(settings, topic):
            assert token.encode() not in (record.value or b""), topic
    changelog = settings.model_copy(update={"topic_prefix": ""})
    for record, _event in records(changelog, f"{settings.app_id}-callbacks-changelog"):
        assert token.encode() not in (record.value or b"")
    (row,) = query(settings, "SELECT callback_url FROM jobs WHERE job_id = %s", ("sealed-cb",))
    assert row["callback_url"].endswith("/webservice/rest/server.php?[redacted]") and token not in row["callback_url"]


def test_two_companies_may_use_the_same_job_id_and_neither_learns_of_the_other(
        settings_factory, topics_for, processes, job_factory, mail_sink):
    """Finding 12: the second company's job is stored as "<id>..c<company>"; each company reads, cancels and is
    called back with the id it chose, and the answer never says that the id was taken."""
    k8_secret = "security-k8-secret-0123456789"
    settings = settings_factory(smtp_port=mail_sink.port, api_keys=api_keys(k7=(K7, 7), k8=(k8_secret, 8)))
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    processes("projector", without_api_keys(settings))
    with ApiServer(settings) as server:
        k7, k8 = SignedClient(server.base_url, "k7", K7), SignedClient(server.base_url, "k8", k8_secret)
        first = k7.post("/api/v1/jobs", job_factory("shared-id", 3, callback_url=PUBLIC_CALLBACK))
        second = k8.post("/api/v1/jobs", job_factory("shared-id", 5, company_id=8, callback_url=PUBLIC_CALLBACK))
        assert (first.status, first.body["job_id"]) == (202, "shared-id")
        assert (second.status, second.body["job_id"], second.body["created"]) == (202, "shared-id", True)
        again = k8.post("/api/v1/jobs", job_factory("shared-id", 5, company_id=8, callback_url=PUBLIC_CALLBACK))
        assert (again.status, again.body["created"]) == (200, False)

        def both_completed():
            replies = [c.get("/api/v1/jobs/shared-id").body for c in (k7, k8)]
            return replies if all(r.get("status") == "completed" for r in replies) else None

        seen7, seen8 = wait_for(both_completed, timeout=120, what="both companies' jobs to complete")
        assert (seen7["company_id"], seen7["progress"]["total"], seen7["job_id"]) == (7, 3, "shared-id")
        assert (seen8["company_id"], seen8["progress"]["total"], seen8["job_id"]) == (8, 5, "shared-id")
        assert [j["job_id"] for j in k8.get("/api/v1/jobs").body["jobs"]] == ["shared-id"]
        recipients = k8.get("/api/v1/jobs/shared-id/recipients").body["recipients"]
        assert len(recipients) == 5
        reserved = k7.post("/api/v1/jobs", job_factory("x..c8", 1, callback_url=PUBLIC_CALLBACK))
        assert (reserved.status, reserved.code) == (422, "invalid_field")
    stored = sorted((e.job_id, e.company_id) for _, e in records(settings, "job-requests"))
    assert stored == [("shared-id", 7), ("shared-id..c8", 8)]
