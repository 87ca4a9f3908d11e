"""One-click unsubscribe and suppression lists through the real worker, projector, API, Kafka, Postgres and an
SMTP sink: the headers a learner receives, the POST that unsubscribes them, the next job that does not mail them,
Moodle told by a signed callback; hard bounces and admin entries; the read model rebuilt by replay."""

from __future__ import annotations

import asyncio
import email
import json
import re
import time
from email.message import Message
from pathlib import Path

import aiohttp
import pytest

from api.store import progress
from content.email.addresses import message_id_for
from offload.client import submit_job
from offload.replay import replay
from schemas.events.suppression import RecipientSuppressed, RecipientUnsubscribed, SuppressionAdded, SuppressionRemoved
from tests.support.api import ApiServer, SignedClient, api_keys, send, without_api_keys
from tests.support.moodle_php import php_reads_callback
from tests.support.moodle_receiver import MoodleReceiver
from tests.support.observe import events, query, read_models, wait_for, wait_for_job
from tests.unit.test_webhooks import mailgun_signature

pytestmark = pytest.mark.integration


K7, K7_SECRET = "moodle-7", "moodle-7-api-secret-0123456789abcdef"
CB, CB_SECRET = "moodle-7-cb", "callback-k7-secret-0123456789abcdef"
MAILGUN_KEY = "mailgun-signing-key-0123456789"
OPS, OPS_SECRET = "ops", "ops-admin-secret-0123456789abcdef"


async def ui_suppress(base: str, company_id: int, form: dict[str, str]) -> tuple[str, str]:
    """An admin signs in to /ui/, adds a suppression with the company page's form; (redirect, page after)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(f"{base}/ui/login", data={"key_id": OPS, "secret": OPS_SECRET, "next": "/ui/jobs"},
                             allow_redirects=False) as signed_in:
            assert signed_in.status == 303
        async with http.get(f"{base}/ui/companies/{company_id}") as page:
            html = await page.text()
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', html)
        assert csrf is not None and "Suppression list" in html
        async with http.post(f"{base}/ui/companies/{company_id}/suppressions",
                             data={"csrf_token": csrf.group(1), **form}, headers={"Origin": base},
                             allow_redirects=False) as added:
            location = added.headers["Location"]

        deadline = time.monotonic() + 60  # until the projector has applied the entry
        while True:
            async with http.get(f"{base}/ui/companies/{company_id}") as again:
                after = await again.text()
            if form["reason"] in after:
                return location, after
            assert time.monotonic() < deadline, "the UI entry never showed on the company page"
            await asyncio.sleep(0.25)


def received(mail_sink, address: str) -> list[Message]:
    return [email.message_from_bytes(m.raw) for m in mail_sink.by_recipient().get(address, [])]


def statuses(settings, job_id: str) -> dict[int, tuple[str, str | None]]:
    rows = query(settings, "SELECT userid, status, error_message FROM job_recipients WHERE job_id = %s", (job_id,))
    return {r["userid"]: (r["status"], r["error_message"]) for r in rows}


def form_post(base: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    reply = send(base, "POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})
    return reply.status, {}, reply.raw


def moodle_reads_unsubscribe(callback, tmp_path: Path) -> dict:
    """What Moodle's PHP client (clients/moodle) makes of a received callback: verified, and who left which list."""
    return php_reads_callback("unsubscribe-callback", callback, {CB: CB_SECRET}, tmp_path)


def test_a_bulk_message_unsubscribes_in_one_click_and_the_next_job_does_not_mail_that_learner(
    settings_factory, topics_for, processes, job_factory, mail_sink, tmp_path
):
    with MoodleReceiver({CB: CB_SECRET}) as moodle:
        settings = settings_factory(
            smtp_port=mail_sink.port, job_batch_size=3, unsubscribe_mailto="unsubscribe@moodle.example.org",
            public_base_url="https://offload.example.org", api_keys=api_keys(**{K7: (K7_SECRET, 7)}),
            api_allow_private_callbacks=True, callback_check_interval=0.2,
            callback_keys=json.dumps({CB: {"secret": CB_SECRET, "company_id": 7}}),
            unsubscribe_callback_urls={"7": moodle.url("/local/offload/unsubscribe.php")},
        )
        topics_for(settings)
        processes("worker", without_api_keys(settings))
        processes("projector", without_api_keys(settings))

        # A course reminder is bulk mail: every learner's message carries both RFC 8058 headers.
        asyncio.run(submit_job(settings, job_factory("reminder-1", 4)))
        wait_for_job(settings, "reminder-1")
        [first] = received(mail_sink, "learner1@example.org")
        targets = re.findall(r"<([^>]+)>", " ".join(first["List-Unsubscribe"].split()))
        assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert len(targets) == 2 and targets[0].startswith("https://offload.example.org/u/u1.7.1.course_reminder.")
        assert targets[1].startswith("mailto:unsubscribe@moodle.example.org?subject=unsubscribe%20u1.7.1.")
        path = targets[0].removeprefix("https://offload.example.org")
        token = path.removeprefix("/u/")
        other = received(mail_sink, "learner2@example.org")[0]["List-Unsubscribe"]
        assert token not in other  # each learner's own link

        # A transactional job carries neither header.
        asyncio.run(submit_job(settings, job_factory("notice-1", 2, category="transactional")))
        wait_for_job(settings, "notice-1")
        notices = [m for m in received(mail_sink, "learner1@example.org") if m["X-Offload-Job"] == "notice-1"]
        assert len(notices) == 1 and notices[0]["List-Unsubscribe"] is None
        assert notices[0]["List-Unsubscribe-Post"] is None

        with ApiServer(settings) as api:
            # A GET (a person's click, or a link scanner) shows a button and unsubscribes no one.
            page = send(api.base_url, "GET", path, b"", {})
            assert page.status == 200 and b"<form method='post'>" in page.raw and b"course_reminder" in page.raw
            # Forged tokens, and ours altered to name another company or learner, are refused and change nothing.
            mac = token.rsplit(".", 1)[1]
            for forged in (token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
                           f"u1.8.1.course_reminder.{mac}", f"u1.7.2.course_reminder.{mac}"):
                status, _, body = form_post(api.base_url, f"/u/{forged}", b"List-Unsubscribe=One-Click")
                assert status == 404 and b"not valid" in body
            # The one-click POST a mail client sends: 200 at once, no redirect.
            status, _, body = form_post(api.base_url, path, b"List-Unsubscribe=One-Click")
            assert status == 200 and b"no longer receive" in body

        # Moodle is told, signed, so it can update the learner's preferences.
        [callback] = wait_for(lambda: moodle.delivered(), timeout=60, what="the unsubscribe callback")
        assert callback.valid and callback.path == "/local/offload/unsubscribe.php"
        assert {k: callback.json[k] for k in ("event", "company_id", "userid", "list_id", "method")} == {
            "event": "unsubscribed", "company_id": 7, "userid": 1, "list_id": "course_reminder",
            "method": "one-click"}
        assert moodle_reads_unsubscribe(callback, tmp_path) == {
            "valid": True, "unsubscribe": {"userid": 1, "list_id": "course_reminder", "company_id": 7}}
        unsubscribes = [e for e in events(settings, "suppressions") if isinstance(e, RecipientUnsubscribed)]
        assert [(e.company_id, e.userid, e.list_id, e.method) for e in unsubscribes] == [
            (7, 1, "course_reminder", "one-click")]  # the GET and the forged tokens added nothing

        # The company's next reminder does not mail learner 1: outcome suppressed, with the reason, counted apart.
        asyncio.run(submit_job(settings, job_factory("reminder-2", 4)))
        job = wait_for_job(settings, "reminder-2")
        assert (job["succeeded"], job["failed"], job["suppressed"]) == (3, 0, 1)
        assert statuses(settings, "reminder-2")[1] == ("suppressed", "unsubscribed from course_reminder (one-click)")
        assert progress(job, [])["progress"].items() >= {"sent": 3, "failed": 0, "suppressed": 1,
                                                          "pending": 0}.items()
        assert [m["X-Offload-Job"] for m in received(mail_sink, "learner1@example.org")] == ["reminder-1", "notice-1"]
        assert len(received(mail_sink, "learner2@example.org")) == 3
        [outcome] = [e for e in events(settings, "outcomes") if isinstance(e, RecipientSuppressed)]
        assert (outcome.job_id, outcome.userid, outcome.scope, outcome.source) == (
            "reminder-2", 1, "course_reminder", "unsubscribe")
        # Another company with the same learner id, and a transactional job of this one, still reach learner 1.
        asyncio.run(submit_job(settings, job_factory("other-company", 1, company_id=8)))
        asyncio.run(submit_job(settings, job_factory("notice-2", 1, category="transactional")))
        assert wait_for_job(settings, "other-company")["suppressed"] == 0
        assert wait_for_job(settings, "notice-2")["succeeded"] == 1
        with ApiServer(settings) as api:
            view = SignedClient(api.base_url, K7, K7_SECRET).get("/api/v1/jobs/reminder-2")
            assert view.status == 200 and view.body["progress"]["suppressed"] == 1


def test_hard_bounces_and_admin_entries_suppress_and_replay_rebuilds_the_lists(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    settings = settings_factory(smtp_port=mail_sink.port, webhook_mailgun_signing_key=MAILGUN_KEY,
                                api_keys=api_keys(**{K7: (K7_SECRET, 7), OPS: (OPS_SECRET, None)}))
    topics_for(settings)
    worker = processes("worker", without_api_keys(settings))
    processes("projector", without_api_keys(settings))
    asyncio.run(submit_job(settings, job_factory("sent-1", 3)))
    wait_for_job(settings, "sent-1")

    def listed() -> dict[tuple[int, str], tuple[str, str]]:
        rows = query(settings, "SELECT userid, scope, source, reason FROM suppressions WHERE company_id = 7")
        return {(r["userid"], r["scope"]): (r["source"], r["reason"]) for r in rows}

    with ApiServer(settings) as api:
        # Mailgun reports a permanent failure of learner 2's message: a hard bounce puts them on the list.
        mid = message_id_for("sent-1", 2, settings.message_id_domain, key=settings.message_id_key())
        report = {"signature": mailgun_signature(MAILGUN_KEY, str(int(time.time())), "mg-bounce-1"),
                  "event-data": {"event": "failed", "severity": "permanent", "id": "mg-ev-1",
                                 "recipient": "learner2@example.org", "timestamp": time.time(),
                                 "reason": "bounce", "delivery-status": {"message": "550 5.1.1 no such user"},
                                 "message": {"headers": {"message-id": mid.strip("<>")}}}}
        reply = send(api.base_url, "POST", "/webhooks/mailgun", json.dumps(report).encode(),
                     {"Content-Type": "application/json"})
        assert reply.status == 200 and reply.body == {"published": 1, "unmatched": 0}
        assert wait_for(lambda: listed().get((2, "*")), what="the bounce on the list")[0] == "bounce"

        # An admin adds learner 3 with a reason; both entries hold the company's next job back.
        company = SignedClient(api.base_url, K7, K7_SECRET)
        added = company.post("/api/v1/companies/7/suppressions", {"userid": 3, "reason": "asked by phone"})
        assert added.status == 202 and added.body["source"] == "manual"
        refused = company.post("/api/v1/companies/7/suppressions", {"userid": 3})
        assert refused.status == 422 and refused.code == "invalid_suppression"
        assert company.get("/api/v1/companies/8/suppressions").status == 404  # another company's list
        wait_for(lambda: (3, "*") in listed(), what="the admin entry")
        # An admin on the company page puts learner 1 off one other list only (course reminders still reach them).
        location, page = asyncio.run(ui_suppress(api.base_url, 7, {"userid": "1", "scope": "weekly_digest",
                                                                   "reason": "asked at the front desk"}))
        assert location == "/ui/companies/7?notice=suppression_added" and "weekly_digest" in page
        for entry in ("7:2:*", "7:3:*", "7:1:weekly_digest"):  # the worker's list, not only the read model's
            worker.wait_for_log(f"suppression list of company 7: SuppressionAdded {entry}", timeout=60)
        asyncio.run(submit_job(settings, job_factory("sent-2", 3)))
        assert wait_for_job(settings, "sent-2")["suppressed"] == 2
        assert {u: s for u, (s, _) in statuses(settings, "sent-2").items()} == {
            1: "sent", 2: "suppressed", 3: "suppressed"}
        assert statuses(settings, "sent-2")[2][1].startswith("bounce reported by mailgun: 550 5.1.1")

        # The admin removes learner 2 (the address was fixed), with a reason: the next job mails them again.
        removed = company.request("DELETE", "/api/v1/companies/7/suppressions/2", {"reason": "address fixed"})
        assert removed.status == 202
        wait_for(lambda: (2, "*") not in listed(), what="the removal")
        listing = company.get("/api/v1/companies/7/suppressions")
        assert [(e["userid"], e["source"]) for e in listing.body["suppressions"]] == [(1, "manual"), (3, "manual")]
        history = [(h["event"], h["entry"], h["by"]) for h in listing.body["history"]]
        assert history == [("removed", "7:2:*", K7), ("added", "7:1:weekly_digest", f"ui:{OPS}"),
                           ("added", "7:3:*", K7), ("added", "7:2:*", None)]
    worker.wait_for_log("suppression list of company 7: SuppressionRemoved 7:2:*", timeout=60)
    asyncio.run(submit_job(settings, job_factory("sent-3", 3)))
    assert wait_for_job(settings, "sent-3")["suppressed"] == 1

    # Every change is in the log, in order; the read model is rebuilt from it row for row.
    changes = [e for e in events(settings, "suppressions") if isinstance(e, SuppressionAdded | SuppressionRemoved)]
    assert [(type(e).__name__, e.userid) for e in changes] == [
        ("SuppressionAdded", 2), ("SuppressionAdded", 3), ("SuppressionAdded", 1), ("SuppressionRemoved", 2)]
    assert [e.reason for e in changes][1:] == ["asked by phone", "asked at the front desk", "address fixed"]
    live = read_models(settings, settings.projection_schema)
    asyncio.run(replay(settings, f"{settings.projection_schema}_replay"))
    rebuilt = read_models(settings, f"{settings.projection_schema}_replay")
    assert rebuilt["suppressions"] == live["suppressions"] and len(live["suppressions"]) == 2
    assert rebuilt["job_recipients"] == live["job_recipients"] and rebuilt["jobs"] == live["jobs"]
