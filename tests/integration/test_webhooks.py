"""Provider webhooks against the real broker and database: signed reports from SES (SNS), SendGrid and Mailgun
are matched to recipients recorded by the projector and become events on the outcomes topic."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from api import webhooks
from api.errors import MAX_BODY, json_errors
from api.store import ReadStore, progress
from content.email.addresses import message_id_for
from eventlog.publisher import EventPublisher
from projections.projector import Projector
from schemas.events import RecipientBounced, RecipientComplained, RecipientDelivered, RecipientSent
from tests.support.api import ApiServer, send
from tests.support.dsn import dsn
from tests.support.observe import events, query
from tests.unit.test_webhooks import (
    TOPIC,
    mailgun_signature,
    make_certificate,
    public_der_b64,
    sendgrid_sign,
    sns_message,
)

pytestmark = pytest.mark.integration

JOB = "wh-job-1"
MAILGUN_KEY = "mailgun-signing-key-0123456789"


async def record_sent(settings, n: int) -> None:
    publisher = EventPublisher(settings, source="urn:test")
    await publisher.start()
    try:
        for userid in range(1, n + 1):
            await publisher.send_and_wait(RecipientSent(
                job_id=JOB, batch_no=0, userid=userid, email=f"learner{userid}@example.org", provider="ses",
                provider_message_id=f"ses-msg-{userid}", attempts=1,
                message_id=message_id_for(JOB, userid, settings.message_id_domain, key=settings.message_id_key())))
    finally:
        await publisher.stop()


class FakeAws:
    """A plain-HTTP stand-in for AWS's SNS host on loopback: serves the signing certificate and records
    subscription confirmations. Reached only through the test's fetch hook, after the production host check."""

    def __init__(self, pem: bytes) -> None:
        self.pem = pem
        self.requests: list[str] = []
        self.base = ""

    async def start(self) -> web.AppRunner:
        async def handle(request: web.Request) -> web.Response:
            self.requests.append(request.path_qs)
            if request.path.endswith(".pem"):
                return web.Response(body=self.pem)
            return web.Response(text="<ConfirmSubscriptionResponse/>")

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return runner

    async def fetch(self, url: str) -> bytes:
        path = url.split("amazonaws.com", 1)[1]
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as response:
            return await response.read()


def test_signed_provider_reports_become_recipient_events(settings_factory, topics_for):
    sns_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sg_key = ec.generate_private_key(ec.SECP256R1())
    settings = settings_factory(webhook_sns_topic_arns=[TOPIC], webhook_sendgrid_public_key=public_der_b64(sg_key),
                                webhook_mailgun_signing_key=MAILGUN_KEY)
    topics_for(settings)
    asyncio.run(record_sent(settings, 4))
    asyncio.run(Projector(settings).run(until_caught_up=True))  # job_recipients with the message ids
    mid = {u: message_id_for(JOB, u, settings.message_id_domain, key=settings.message_id_key()) for u in range(1, 5)}
    aws = FakeAws(make_certificate(sns_key))

    async def scenario() -> dict[str, tuple[int, dict]]:
        aws_runner = await aws.start()
        publisher, store = EventPublisher(settings, source="urn:test:api"), ReadStore(settings)
        await publisher.start()
        await store.open()
        app = web.Application(middlewares=[json_errors])
        app[MAX_BODY] = settings.api_max_body_bytes
        webhooks.setup(app, settings, publisher, store, fetch=aws.fetch)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        replies: dict[str, tuple[int, dict]] = {}
        try:
            async with aiohttp.ClientSession() as http:
                async def post(name: str, path: str, body: bytes, headers: dict | None = None) -> None:
                    async with http.post(base + path, data=body, headers=headers or {}) as response:
                        replies[name] = (response.status, await response.json())

                await post("subscribe", "/webhooks/ses", json.dumps(sns_message(
                    sns_key, kind="SubscriptionConfirmation")).encode())
                bounce = {"notificationType": "Bounce", "mail": {"messageId": "ses-msg-1", "commonHeaders": {
                    "messageId": mid[1]}}, "bounce": {"bounceType": "Permanent", "timestamp": "2026-11-28T10:00:00Z",
                    "bouncedRecipients": [{"emailAddress": "learner1@example.org", "diagnosticCode": "550 5.1.1"}]}}
                bounce_message = json.dumps(sns_message(sns_key, version="1", Message=json.dumps(bounce))).encode()
                await post("ses", "/webhooks/ses", bounce_message)
                await post("ses-replay", "/webhooks/ses", bounce_message)  # the same signed SNS message again
                complaint = {"notificationType": "Complaint", "mail": {"messageId": "ses-msg-4"},
                             "complaint": {"complainedRecipients": [{"emailAddress": "learner4@example.org"}]}}
                await post("ses-by-provider-id", "/webhooks/ses", json.dumps(sns_message(
                    sns_key, MessageId="mid-2", Message=json.dumps(complaint))).encode())
                await post("ses-evil-cert", "/webhooks/ses", json.dumps(sns_message(
                    sns_key, SigningCertURL="https://sns.eu-west-1.amazonaws.com.evil.example/x.pem")).encode())

                sg_body = json.dumps([
                    {"event": "delivered", "email": "learner2@example.org", "smtp-id": mid[2], "sg_event_id": "sg-e1",
                     "sg_message_id": "sg-2.filter", "timestamp": int(time.time())},
                    {"event": "delivered", "email": "stranger@example.org", "smtp-id": "<unknown@x>",
                     "sg_event_id": "sg-e2", "timestamp": int(time.time())}]).encode()
                ts = str(int(time.time()))
                await post("sendgrid", "/webhooks/sendgrid", sg_body, {
                    "X-Twilio-Email-Event-Webhook-Signature": sendgrid_sign(sg_key, ts, sg_body),
                    "X-Twilio-Email-Event-Webhook-Timestamp": ts})
                await post("sendgrid-replay", "/webhooks/sendgrid", sg_body, {
                    "X-Twilio-Email-Event-Webhook-Signature": sendgrid_sign(sg_key, ts, sg_body),
                    "X-Twilio-Email-Event-Webhook-Timestamp": ts})
                await post("sendgrid-tampered", "/webhooks/sendgrid", sg_body.replace(b"delivered", b"spamreport"), {
                    "X-Twilio-Email-Event-Webhook-Signature": sendgrid_sign(sg_key, ts, sg_body),
                    "X-Twilio-Email-Event-Webhook-Timestamp": ts})

                mailgun = {"signature": mailgun_signature(MAILGUN_KEY, str(int(time.time())), "mg-token-1"),
                           "event-data": {"event": "delivered", "id": "mg-ev-1", "recipient": "learner3@example.org",
                                          "timestamp": time.time(),
                                          "message": {"headers": {"message-id": mid[3].strip("<>")}}}}
                await post("mailgun", "/webhooks/mailgun", json.dumps(mailgun).encode())
                await post("mailgun-replay", "/webhooks/mailgun", json.dumps(mailgun).encode())
                forged = {**mailgun, "signature": mailgun_signature("not-the-key", str(int(time.time())), "mg-2")}
                await post("mailgun-forged", "/webhooks/mailgun", json.dumps(forged).encode())
        finally:
            await runner.cleanup()
            await store.close()
            await publisher.stop()
            await aws_runner.cleanup()
        return replies

    replies = asyncio.run(scenario())
    assert replies["subscribe"] == (200, {"confirmed": True})
    assert any("Action=ConfirmSubscription" in r for r in aws.requests), aws.requests
    assert replies["ses"] == (200, {"published": 1, "unmatched": 0})
    assert replies["ses-by-provider-id"] == (200, {"published": 1, "unmatched": 0})
    assert replies["ses-replay"][1]["error"]["code"] == "replayed_request"
    assert replies["sendgrid-replay"][1]["error"]["code"] == "replayed_request"
    assert replies["ses-evil-cert"][0] == 403 and replies["ses-evil-cert"][1]["error"]["code"] == "untrusted_sns_url"
    assert not any("evil" in r for r in aws.requests)
    assert replies["sendgrid"] == (200, {"published": 1, "unmatched": 1})
    assert replies["sendgrid-tampered"][0] == 403
    assert replies["mailgun"] == (200, {"published": 1, "unmatched": 0})
    assert replies["mailgun-replay"][1]["error"]["code"] == "replayed_request"
    assert replies["mailgun-forged"][0] == 403

    reports = [e for e in events(settings, "outcomes")
               if isinstance(e, RecipientDelivered | RecipientBounced | RecipientComplained)]
    by_user = {(type(e).__name__, e.userid, e.provider) for e in reports}
    assert by_user == {("RecipientBounced", 1, "ses"), ("RecipientComplained", 4, "ses"),
                       ("RecipientDelivered", 2, "sendgrid"), ("RecipientDelivered", 3, "mailgun")}
    bounced = next(e for e in reports if isinstance(e, RecipientBounced))
    assert bounced.job_id == JOB and bounced.permanent and bounced.detail == "550 5.1.1"
    assert bounced.occurred_at == datetime(2026, 11, 28, 10, tzinfo=UTC)

    # The reports reach the read models: each learner's delivery state and the job's bounce rate, counted once
    # even when a provider repeats a report.
    asyncio.run(Projector(settings).run(until_caught_up=True))
    async def repeat(event) -> None:  # the provider sends the same report again
        publisher = EventPublisher(settings, source="urn:test")
        await publisher.send_all([event])
        await publisher.stop()

    asyncio.run(repeat(bounced))
    asyncio.run(Projector(settings).run(until_caught_up=True))
    delivery = {r["userid"]: r["delivery"] for r in query(settings, "SELECT userid, delivery FROM job_recipients")}
    assert delivery == {1: "bounced", 2: "delivered", 3: "delivered", 4: "complained"}
    [job] = query(settings, "SELECT * FROM jobs WHERE job_id = %s", (JOB,))
    assert (job["delivered"], job["bounced"], job["complained"]) == (2, 1, 1)
    assert progress(job, [])["delivery"] == {"delivered": 2, "bounced": 1, "complained": 1, "bounce_rate": 0.25}


def test_reports_map_by_the_message_id_as_sent_so_ids_from_before_keying_still_map_and_guessed_ones_do_not(
        settings_factory, topics_for):
    """Issue 11 finding 10: Message-IDs are HMACs under message_id_secret now. A learner sent before the upgrade
    (an unkeyed sha256 Message-ID, recorded as sent) still gets its report; the unkeyed id an outsider computes
    for another learner of the same job matches nobody, because matching reads the id recorded at send time."""
    settings = settings_factory(webhook_mailgun_signing_key=MAILGUN_KEY)
    topics_for(settings)
    job = "wh-upgrade-job"

    def unkeyed(userid: int) -> str:  # the scheme before keying: computable by anyone who knows job and userid
        return "<" + hashlib.sha256(f"{job}\x00{userid}".encode()).hexdigest()[:40] + f"@{settings.message_id_domain}>"

    keyed = message_id_for(job, 2, settings.message_id_domain, key=settings.message_id_key())

    async def sent() -> None:
        publisher = EventPublisher(settings, source="urn:test")
        await publisher.start()
        try:
            for userid, message_id in ((1, unkeyed(1)), (2, keyed)):
                await publisher.send_and_wait(RecipientSent(
                    job_id=job, batch_no=0, userid=userid, email=f"learner{userid}@example.org", provider="mailgun",
                    provider_message_id=None, attempts=1, message_id=message_id))
        finally:
            await publisher.stop()

    asyncio.run(sent())
    asyncio.run(Projector(settings).run(until_caught_up=True))

    async def reports() -> list[tuple[int, dict]]:
        publisher, store = EventPublisher(settings, source="urn:test:api"), ReadStore(settings)
        await publisher.start()
        await store.open()
        app = web.Application(middlewares=[json_errors])
        app[MAX_BODY] = settings.api_max_body_bytes
        webhooks.setup(app, settings, publisher, store)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        replies = []
        try:
            async with aiohttp.ClientSession() as http:
                for n, (userid, message_id) in enumerate([(1, unkeyed(1)), (2, unkeyed(2)), (2, keyed)]):
                    body = {"signature": mailgun_signature(MAILGUN_KEY, str(int(time.time())), f"mg-up-{n}"),
                            "event-data": {"event": "delivered", "id": f"mg-up-ev-{n}",
                                           "recipient": f"learner{userid}@example.org", "timestamp": time.time(),
                                           "message": {"headers": {"message-id": message_id.strip("<>")}}}}
                    async with http.post(base + "/webhooks/mailgun", json=body) as response:
                        replies.append((response.status, await response.json()))
        finally:
            await runner.cleanup()
            await store.close()
            await publisher.stop()
        return replies

    assert asyncio.run(reports()) == [(200, {"published": 1, "unmatched": 0}), (200, {"published": 0, "unmatched": 1}),
                                      (200, {"published": 1, "unmatched": 0})]
    delivered = [e for e in events(settings, "outcomes") if isinstance(e, RecipientDelivered)]
    assert sorted((e.job_id, e.userid) for e in delivered) == [(job, 1), (job, 2)]


def test_a_relays_bounce_is_read_again_later_if_it_came_before_its_send_was_recorded(settings_factory, topics_for):
    """/webhooks/smtp (the local relay's delivery status notifications): a bounce of a recent message of ours whose
    send the read model does not know yet is answered 503, publishing nothing, so that the relay's pipe delivers it
    again; once the send is recorded it is published once. Old or foreign notifications are answered unmatched."""
    token = "relay-bounce-token-0123456789abcdef0123"
    settings = settings_factory(webhook_smtp_token=token)
    topics_for(settings)
    job, now = "dsn-job", datetime.now(UTC)
    mid = {u: message_id_for(job, u, settings.message_id_domain, key=settings.message_id_key()) for u in (1, 9)}
    gone = ("learner1@example.org", "failed", "5.1.1", "550 5.1.1 <learner1@example.org>: User unknown")
    notice = dsn(gone, message_id=mid[1], sent_at=now, notice_id="<n1@relay.example.org>")
    authorized = {"Authorization": f"Bearer {token}", "Content-Type": "message/rfc822"}

    async def sent() -> None:
        publisher = EventPublisher(settings, source="urn:test")
        await publisher.start()
        try:
            await publisher.send_and_wait(RecipientSent(
                job_id=job, batch_no=0, userid=1, email="learner1@example.org", provider="smtp",
                provider_message_id="A63D7984093", attempts=1, message_id=mid[1]))
        finally:
            await publisher.stop()

    with ApiServer(settings) as api:
        early = send(api.base_url, "POST", "/webhooks/smtp", notice, authorized)
        assert (early.status, early.body["error"]["code"]) == (503, "bounce_before_send")
        assert early.headers["Retry-After"] == "60"
        assert not [e for e in events(settings, "outcomes") if isinstance(e, RecipientBounced)]
        asyncio.run(sent())
        asyncio.run(Projector(settings).run(until_caught_up=True))
        again = send(api.base_url, "POST", "/webhooks/smtp", notice, authorized)
        assert (again.status, again.body) == (200, {"published": 1, "unmatched": 0})
        repeat = send(api.base_url, "POST", "/webhooks/smtp", notice, authorized)
        assert (repeat.status, repeat.body) == (200, {"published": 0, "unmatched": 0, "duplicate": True})
        old = dsn(("learner9@example.org", "failed", "5.1.1", "550 gone"), message_id=mid[9],
                  sent_at=now - timedelta(seconds=settings.webhook_max_age + 60))
        foreign = dsn(gone, message_id="<someone-elses@mail.example.org>", queue_id=None, sent_at=now)
        for body in (old, foreign):
            reply = send(api.base_url, "POST", "/webhooks/smtp", body, authorized)
            assert (reply.status, reply.body) == (200, {"published": 0, "unmatched": 1})
    with ApiServer(settings.model_copy(update={"webhook_smtp_token": None})) as api:
        refused = send(api.base_url, "POST", "/webhooks/smtp", notice, authorized)
        assert (refused.status, refused.body["error"]["code"]) == (503, "webhook_not_configured")

    (bounced,) = [e for e in events(settings, "outcomes") if isinstance(e, RecipientBounced)]
    assert (bounced.job_id, bounced.userid, bounced.provider, bounced.permanent) == (job, 1, "smtp", True)
    assert bounced.provider_event_id == "<n1@relay.example.org>/learner1@example.org"
