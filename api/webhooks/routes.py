"""The /webhooks/{ses,sendgrid,mailgun,smtp} routes: read the body, verify, accept once, publish."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from api.bodies import read_body
from api.errors import ApiError, json_response
from api.store import ReadStore
from api.webhooks.dsn import NotDsn, read_dsn
from api.webhooks.reports import mailgun_reports, sendgrid_reports, ses_reports
from api.webhooks.service import Matched, WebhookService
from api.webhooks.signatures import Fetch, Refused, parse_time, verify_mailgun, verify_sendgrid
from config.settings import Settings
from eventlog.publisher import EventPublisher
from security.seen import PostgresSeen, SeenOnce, token_of

log = logging.getLogger(__name__)
MAX_WEBHOOK_BYTES = 1024 * 1024

WEBHOOKS: web.AppKey[WebhookService] = web.AppKey("webhooks", WebhookService)


async def _body(request: web.Request) -> bytes:
    """The whole body, up to MAX_WEBHOOK_BYTES, within api_body_timeout (413 / 408 otherwise)."""
    return await read_body(request, limit=MAX_WEBHOOK_BYTES, what="webhooks",
                           timeout=request.app[WEBHOOKS].settings.api_body_timeout)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "malformed_json", "the body is not JSON (or is nested too deeply)") from None


def _refused(provider: str, exc: Refused) -> ApiError:
    log.warning("%s webhook refused: %s", provider, exc.code)
    status = 503 if exc.code == "webhook_not_configured" else 403
    return ApiError(status, exc.code, exc.message)


async def ses_webhook(request: web.Request) -> web.Response:
    service = request.app[WEBHOOKS]
    message = _json(await _body(request))
    if not isinstance(message, dict):
        raise ApiError(400, "bad_sns_message", "an SNS message is a JSON object")
    try:
        await service.sns.verify(message)
        if message["Type"] == "SubscriptionConfirmation":
            await service.confirm_subscription(str(message.get("SubscribeURL", "")))
            log.info("SNS subscription to %s confirmed", message.get("TopicArn"))
            return json_response({"confirmed": True})
    except Refused as exc:
        raise _refused("ses", exc) from None
    if message["Type"] != "Notification":
        return json_response({"ignored": message["Type"]})
    notification = _json(str(message.get("Message", "")).encode())
    reports = ses_reports(notification, str(message.get("MessageId"))) if isinstance(notification, dict) else []
    async with service.once("ses", token_of(str(message["TopicArn"]), str(message.get("MessageId"))),
                            signed_at=parse_time(message.get("Timestamp"))):
        published, unmatched = await service.publish("ses", await service.match(reports))
    return json_response({"published": published, "unmatched": unmatched})


async def sendgrid_webhook(request: web.Request) -> web.Response:
    service = request.app[WEBHOOKS]
    key = service.settings.webhook_sendgrid_public_key
    body = await _body(request)
    timestamp, now = request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp", ""), service.clock()
    try:
        if not key:
            raise Refused("webhook_not_configured", "no SendGrid verification key is configured")
        verify_sendgrid(key, request.headers.get("X-Twilio-Email-Event-Webhook-Signature", ""), timestamp, body,
                        max_age=service.settings.webhook_max_age, now=now)
    except Refused as exc:
        raise _refused("sendgrid", exc) from None
    events = _json(body)
    # Keyed by what was signed, not by the signature: an ECDSA signature has a second valid form (s -> n - s).
    async with service.once("sendgrid", token_of(timestamp, body), signed_at=float(timestamp)):
        reports = sendgrid_reports(events if isinstance(events, list) else [])
        published, unmatched = await service.publish("sendgrid", await service.match(reports))
    return json_response({"published": published, "unmatched": unmatched})


async def mailgun_webhook(request: web.Request) -> web.Response:
    service = request.app[WEBHOOKS]
    key = service.settings.webhook_mailgun_signing_key
    payload = _json(await _body(request))
    if not isinstance(payload, dict):
        raise ApiError(400, "bad_webhook", "a Mailgun webhook is a JSON object")
    now = service.clock()
    signed = payload.get("signature") or {}
    try:
        if key is None:
            raise Refused("webhook_not_configured", "no Mailgun signing key is configured")
        if not isinstance(signed, dict):
            raise Refused("bad_signature", "the Mailgun signature block is incomplete")
        token = verify_mailgun(key.get_secret_value(), signed, max_age=service.settings.webhook_max_age, now=now)
    except Refused as exc:
        raise _refused("mailgun", exc) from None
    data = payload.get("event-data")
    async with service.once("mailgun", token, signed_at=float(signed["timestamp"])):
        reports = mailgun_reports(data if isinstance(data, dict) else {})
        published, unmatched = await service.publish("mailgun", await service.match(reports))
    return json_response({"published": published, "unmatched": unmatched})


async def smtp_webhook(request: web.Request) -> web.Response:
    """A delivery status notification the local relay returned to the envelope sender, posted as it came (the
    relay pipes that address's mail here: docs/suppression.md). Its failed recipients are matched and published
    like a provider's bounces; anything else that reaches the address is answered 200 and ignored, so that the
    relay neither retries nor returns it."""
    service = request.app[WEBHOOKS]
    token = service.settings.webhook_smtp_token
    try:
        if token is None:
            raise Refused("webhook_not_configured", "no token for the relay's bounces is configured")
        expected = f"Bearer {token.get_secret_value()}".encode()
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            raise Refused("bad_token", "the Authorization header does not carry the relay's bounce token")
    except Refused as exc:
        raise _refused("smtp", exc) from None
    body = await _body(request)
    now = service.clock()
    try:
        dsn = read_dsn(body, now=datetime.fromtimestamp(now, UTC))
    except NotDsn as exc:
        log.info("smtp webhook: ignored (%s)", exc)
        return json_response({"ignored": str(exc)})
    try:
        async with service.once("smtp", token_of(dsn.notice_id), signed_at=now):
            matched = await service.match(dsn.reports)
            _sent_already(service, matched, now)
            published, unmatched = await service.publish("smtp", matched)
    except ApiError as exc:
        if exc.code != "replayed_request":
            raise
        return json_response({"published": 0, "unmatched": 0, "duplicate": True})  # the relay delivered it again
    return json_response({"published": published, "unmatched": unmatched})


def _sent_already(service: WebhookService, matched: Matched, now: float) -> None:
    """503 if one of the ``matched`` reports is about a message of ours (its Message-ID in our domain) that failed
    within the last webhook_max_age seconds and whose send the read model does not know yet: a relay may return a
    bounce before the projector recorded the send, and the relay's pipe (clients/relay/offload-bounces) then keeps
    the notification and delivers it again later. Nothing of the notification is published before that."""
    domain = f"@{service.settings.message_id_domain}>".lower()
    for report, learner in matched:
        ours = report.message_id is not None and report.message_id.lower().endswith(domain)
        recent = now - report.occurred_at.timestamp() < service.settings.webhook_max_age
        if ours and recent and learner is None:
            raise ApiError(503, "bounce_before_send", "the bounced message's send is not recorded yet; deliver "
                           "the notification again later", retry_after=60)


def setup(app: web.Application, settings: Settings, publisher: EventPublisher, store: ReadStore, *,
          fetch: Fetch | None = None, seen: SeenOnce | None = None,
          clock: Callable[[], float] = time.time) -> None:
    """Add /webhooks/{ses,sendgrid,mailgun,smtp}. ``fetch`` replaces the https GET of SNS certificates and
    subscription URLs in tests only; the SNS host check happens before it is called either way. ``seen`` is
    the replay store every API replica shares (the API passes the one its request verifier uses; default:
    Postgres through the read store's pool). ``clock`` judges every timestamp window (tests move it)."""
    shared = seen if seen is not None else PostgresSeen(store.pool, settings.api_seen_schema)
    service = WebhookService(settings, publisher, store, fetch, shared, clock=clock)
    app[WEBHOOKS] = service
    app.router.add_post("/webhooks/ses", ses_webhook)
    app.router.add_post("/webhooks/sendgrid", sendgrid_webhook)
    app.router.add_post("/webhooks/mailgun", mailgun_webhook)
    app.router.add_post("/webhooks/smtp", smtp_webhook)

    async def _close(app: web.Application) -> None:
        await service.close()

    app.on_cleanup.append(_close)
