"""Automatic pause: bounces reported through a provider webhook pause the job; resumed, it sends the rest once."""

from __future__ import annotations

import asyncio
import html
import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from content.email import message_id_for
from offload.client import submit_job
from schemas.events import CallbackDelivered, JobCompleted, JobPaused
from tests.integration.test_callbacks import KEY_ID, SECRET
from tests.support.api import ApiProcess, SignedClient, api_keys
from tests.support.jobs import job_payload
from tests.support.moodle_php import php_reads_callback
from tests.support.moodle_receiver import MoodleReceiver
from tests.support.observe import events, query, wait_for, wait_for_job
from tests.unit.test_webhooks import mailgun_signature

pytestmark = pytest.mark.integration


class AdminBrowser:
    """Signs in to /ui/ with an admin key and keeps the session cookie, as a browser does."""

    def __init__(self, base_url: str, key_id: str, secret: str) -> None:
        self.base_url = base_url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.post("/ui/login", {"key_id": key_id, "secret": secret}, csrf=False)
        self.csrf = ""

    def get(self, path: str) -> str:
        with self.opener.open(self.base_url + path, timeout=30) as response:
            page = response.read().decode()
        found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
        self.csrf = found.group(1) if found else self.csrf
        return page

    def post(self, path: str, form: dict[str, str], *, csrf: bool = True) -> str:
        data = urllib.parse.urlencode({**form, **({"csrf_token": self.csrf} if csrf else {})}).encode()
        with self.opener.open(urllib.request.Request(self.base_url + path, data=data, method="POST"),
                              timeout=30) as response:
            return response.geturl()  # after the redirect

def php_pause_from(received, tmp_path) -> dict:
    """What Moodle's PHP client makes of a callback: verifies it, then OffloadClient::pauseFrom."""
    return php_reads_callback("pause-callback", received, {KEY_ID: SECRET}, tmp_path)


MAILGUN_KEY = "mailgun-signing-key-0123456789"
ADMIN_SECRET = "admin-secret-0123456789-0123456789"


def paused_job(settings, client: SignedClient, worker, mail_sink, job_id: str, **extra) -> JobPaused:
    """Submits a 60-learner job, bounces one of the first 20 through the Mailgun webhook, waits until the job is
    paused and a batch was held back (the sink holds the third batch until then)."""
    asyncio.run(submit_job(settings, job_payload(job_id, 60, **extra)))
    wait_for(lambda: len(query(settings, "SELECT 1 FROM job_recipients WHERE job_id = %s AND status = 'sent'",
                               (job_id,))) >= 20, timeout=60, what="two batches sent and projected")
    mid = message_id_for(job_id, 3, settings.message_id_domain, key=settings.message_id_key())
    report = {"signature": mailgun_signature(MAILGUN_KEY, str(int(time.time())), f"tok-{job_id}"),
              "event-data": {"event": "failed", "severity": "permanent", "id": f"ev-{job_id}",
                             "recipient": "learner3@example.org", "timestamp": time.time(),
                             "delivery-status": {"message": "550 5.1.1 no such user"},
                             "message": {"headers": {"message-id": mid.strip("<>")}}}}
    reply = client.post("/webhooks/mailgun", json.dumps(report).encode(), headers={})
    assert reply.status == 200 and reply.body["published"] == 1, reply.body  # 1 of 20 bounced: 5 % > 2 %

    paused = wait_for(lambda: [e for e in events(settings, "jobs") if isinstance(e, JobPaused)], timeout=60,
                      what="JobPaused")[0]
    wait_for(lambda: f"job {job_id} paused, its batches wait" in worker.log_path.read_text(), timeout=60,
             what="the worker holding the job's batches")
    mail_sink.release()  # the batch in flight finishes; the rest wait: neither sent nor failed
    wait_for(lambda: f"waits: job {job_id} is paused" in worker.log_path.read_text(), timeout=60,
             what="a batch held back")
    assert mail_sink.count() < 60
    assert not [e for e in events(settings, "jobs") if isinstance(e, JobCompleted)]
    assert not query(settings, "SELECT 1 FROM job_recipients WHERE job_id = %s AND status = 'failed'", (job_id,))
    return paused


@pytest.fixture
def paused_stack(settings_factory, topics_for, processes, mail_sink, tmp_path):
    # One batch partition and one SMTP session: batches run one after another, so the sink's hold stops the job
    # in its third batch while the bounce of the first two arrives.
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=10, batch_partitions=1, smtp_connections=1,
                                pause_min_sample=10, webhook_mailgun_signing_key=MAILGUN_KEY,
                                api_keys=api_keys(ops=(ADMIN_SECRET, None)),
                                api_allow_private_callbacks=True,  # the Moodle receiver is on loopback
                                callback_keys=json.dumps({KEY_ID: {"secret": SECRET, "company_id": 7}}),
                                callback_check_interval=0.2)
    topics_for(settings)
    mail_sink.hold_after(20)
    worker = processes("worker", settings)
    processes("projector", settings)
    with ApiProcess(settings, tmp_path / "api.log") as api:
        yield settings, api, SignedClient(api.base_url, "ops", ADMIN_SECRET), worker


def test_bounces_above_the_threshold_pause_the_job_until_resumed_and_nobody_is_sent_twice(paused_stack, mail_sink):
    settings, api, client, worker = paused_stack
    paused = paused_job(settings, client, worker, mail_sink, "pause-job")
    assert paused.bounced == 1 and paused.sent >= 20 and paused.bounce_threshold == 0.02
    assert paused.reason.startswith("bounce rate ") and "above 2.0%" in paused.reason
    view = wait_for(lambda: (v := client.get("/api/v1/jobs/pause-job").body)["status"] == "paused" and v,
                    timeout=60, what="the API shows the pause")
    assert view["pause"]["reason"] == paused.reason and view["pause"]["figures"]["bounced"] == 1
    # The job lists say paused too, and find it by that status.
    listed = client.get("/api/v1/jobs?status=paused").body
    assert [j["job_id"] for j in listed["jobs"]] == ["pause-job"] and listed["jobs"][0]["status"] == "paused"
    assert client.get("/api/v1/jobs?status=running").body["total"] == 0

    # The admin's job page says why and offers Resume; resuming there is a CSRF-protected form like cancel.
    admin = AdminBrowser(api.base_url, "ops", ADMIN_SECRET)
    page = admin.get("/ui/jobs/pause-job")
    assert f"Paused: {html.escape(paused.reason)}" in page and 'id="resume-button"' in page
    assert '<span class="badge badge-paused">paused</span>' in admin.get("/ui/jobs?status=paused")
    for bad_reason in (5, "x" * 501):
        refused = client.post("/api/v1/jobs/pause-job/resume", {"reason": bad_reason})
        assert (refused.status, refused.code) == (422, "invalid_field"), refused.body
    assert admin.post("/ui/jobs/pause-job/resume", {"reason": "bad list cleaned"}).endswith(
        "/ui/jobs/pause-job?notice=resume_requested")
    job = wait_for_job(settings, "pause-job", timeout=120)
    assert (job["succeeded"], job["failed"]) == (60, 0)
    assert client.get("/api/v1/jobs/pause-job").body["pause"]["paused"] is False
    assert client.get("/api/v1/jobs?status=paused").body["total"] == 0
    assert client.post("/api/v1/jobs/pause-job/resume").status == 409
    assert admin.post("/ui/jobs/pause-job/resume", {"reason": "again"}).endswith(
        "/ui/jobs/pause-job?notice=job_not_paused")
    with pytest.raises(urllib.error.HTTPError) as unknown:
        admin.post("/ui/jobs/no-such-job/resume", {"reason": "x"})
    assert unknown.value.code == 404
    counts = mail_sink.recipient_counts()
    assert len(counts) == 60 and set(counts.values()) == {1}, counts


def test_a_paused_job_cancelled_fails_its_waiting_learners_as_cancelled(paused_stack, mail_sink):
    settings, _, client, worker = paused_stack
    paused_job(settings, client, worker, mail_sink, "pause-cancel")
    reply = client.post("/api/v1/jobs/pause-cancel/cancel", {"reason": "list is bad"})
    assert reply.status == 202, reply.body
    job = wait_for_job(settings, "pause-cancel", status="cancelled", timeout=120)
    served = mail_sink.recipient_counts()
    assert set(served.values()) == {1} and 20 <= len(served) < 60
    assert (job["succeeded"], job["failed"]) == (len(served), 60 - len(served))
    failed = query(settings, "SELECT error_message, retryable FROM job_recipients WHERE job_id = %s AND "
                             "status = 'failed'", ("pause-cancel",))
    assert {(r["error_message"], r["retryable"]) for r in failed} == {("job cancelled before this batch ran", True)}


def test_moodle_hears_by_signed_callback_when_a_job_pauses_with_the_figures_and_when_it_resumes(
        paused_stack, mail_sink, tmp_path):
    settings, _, client, worker = paused_stack
    with MoodleReceiver({KEY_ID: SECRET}) as moodle:
        paused = paused_job(settings, client, worker, mail_sink, "pause-cb",
                            callback_url=moodle.url("/local/offload/callback.php?jobid=pause-cb"))
        (told,) = wait_for(lambda: [r for r in moodle.delivered() if r.json["event"] == "paused"], timeout=60,
                           what="the paused callback")
        body = told.json
        assert told.valid
        assert php_pause_from(told, tmp_path) == {"valid": True, "pause": {  # what Moodle's PHP client reads
            "event": "paused", "job_id": "pause-cb", "reason": paused.reason, "figures": told.json["pause"]}}
        assert (body["job_id"], body["company_id"], body["status"], body["run"]) == ("pause-cb", 7, "paused", 0)
        assert body["callback_id"] == f"pause-cb:0:paused-{int(paused.paused_at.timestamp() * 1000)}"
        assert body["pause"] == {
            "reason": paused.reason, "sent": paused.sent, "bounced": 1, "complained": 0,
            "bounce_rate": paused.bounce_rate, "complaint_rate": 0.0, "bounce_threshold": 0.02,
            "complaint_threshold": paused.complaint_threshold, "min_sample": 10}
        totals = body["totals"]
        assert totals["total"] == 60 and totals["succeeded"] < 60 and totals["failed"] == 0
        assert totals["pending"] == 60 - totals["succeeded"]

        assert client.post("/api/v1/jobs/pause-cb/resume", {"reason": "bad address removed"}).status == 202
        wait_for_job(settings, "pause-cb", timeout=120)
        delivered = wait_for(lambda: (d := [r.json for r in moodle.delivered()]) and d[-1]["event"] == "completed"
                             and d, timeout=120, what="the completed callback")
    assert all(r.valid for r in moodle.received)
    names = [b["event"] for b in delivered]
    assert names[0] == "started" and names.count("paused") == 1 and names.count("resumed") == 1
    assert names.index("paused") < names.index("resumed") < names.index("completed")
    resumed = delivered[names.index("resumed")]
    assert php_pause_from(moodle.delivered()[names.index("resumed")], tmp_path)["pause"]["event"] == "resumed"
    assert resumed["status"] == "running" and resumed["resume"] == {"requested_by": "ops",
                                                                    "reason": "bad address removed"}
    assert "pause" not in resumed and "resume" not in body
    assert delivered[-1]["totals"]["succeeded"] == 60
    # Each was recorded like any callback: CallbackDelivered with its name (after Moodle's answer, so the log is
    # waited for: the receiver can hold the last one before its event is written).
    def recorded() -> set[str] | None:
        names = {e.event for e in events(settings, "callbacks") if isinstance(e, CallbackDelivered)}
        return names if {"paused", "resumed", "completed"} <= names else None

    wait_for(recorded, timeout=60, what="CallbackDelivered for paused, resumed and completed")
