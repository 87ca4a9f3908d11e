"""Provider webhooks: what SES (through SNS), SendGrid and Mailgun learned after sending, as events.

Each provider signs its own way, and nothing is believed before its signature verifies:
- SES via SNS: RSA signature (SignatureVersion 1: SHA1, 2: SHA256) under the certificate at SigningCertURL, which
  must be https on an ``sns.<region>.amazonaws.com`` host; the topic must be one we configured (anyone can get a
  valid SNS signature from a topic of their own). A SubscriptionConfirmation is confirmed the same way.
- SendGrid Event Webhook: ECDSA (P-256, SHA-256) over timestamp + body with the configured public key.
- Mailgun: HMAC-SHA256 of timestamp + token under the webhook signing key.
Each is accepted once, across every API replica (``security.seen``): SNS by topic + MessageId, SendGrid by what it
signed (timestamp + body), Mailgun by token. A provider's retry after a failure here is let through again.
Reports are matched to a job's recipient through our deterministic Message-ID, else the provider's message id
(both recorded in job_recipients by the projector), and become RecipientDelivered / RecipientBounced /
RecipientComplained on the outcomes topic. Unmatched reports are answered 200 and logged: a retry would not help.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from api.errors import ApiError, json_response
from api.store import ReadStore
from api.suppressions import suppression_for_report
from config.settings import Settings
from eventlog.publisher import EventPublisher
from schemas.events import RecipientBounced, RecipientComplained, RecipientDelivered
from security.seen import PostgresSeen, SeenOnce, SeenUnavailable, token_of

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[bytes]]
# sns.<region>.amazonaws.com, sns.us-gov-west-1.amazonaws.com, sns.cn-north-1.amazonaws.com.cn: a region is
# letters-letters-digit (an "s3" or "sns" in that place would be an S3 bucket's virtual host).
SNS_HOST = re.compile(r"sns\.(?:(?:[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2})\.amazonaws\.com"
                      r"|cn-[a-z]+-[0-9]{1,2}\.amazonaws\.com\.cn)")
_UNIX_TIME = re.compile(r"[0-9]{1,12}")  # ASCII only: "²".isdigit() is true and float("²") raises
MAX_WEBHOOK_BYTES = 1024 * 1024
_SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}


class Refused(Exception):
    """A webhook that is not trustworthy; ``code`` is the machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- signatures -------------------------------------------------------------------------------------------------


def check_sns_url(url: str) -> None:
    """Only AWS's own SNS hosts over https: a certificate or subscription URL anywhere else is refused."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or not SNS_HOST.fullmatch(parts.hostname) or parts.port \
            or parts.username:
        raise Refused("untrusted_sns_url", "the SNS URL must be https on an sns.<region>.amazonaws.com host")


def sns_string_to_sign(message: dict[str, Any]) -> bytes:
    fields = _SNS_FIELDS.get(str(message.get("Type")))
    if fields is None:
        raise Refused("bad_sns_message", "unknown SNS message type")
    return "".join(f"{name}\n{message[name]}\n" for name in fields if message.get(name) is not None).encode()


class SnsVerifier:
    def __init__(self, fetch: Fetch, *, topic_arns: Iterable[str], max_age: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._fetch = fetch
        self._topics = frozenset(topic_arns)
        self._max_age = max_age
        self._clock = clock
        self._keys: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()

    async def verify(self, message: dict[str, Any]) -> None:
        if message.get("TopicArn") not in self._topics:
            raise Refused("unknown_sns_topic", "this SNS topic is not configured (webhook_sns_topic_arns)")
        version = str(message.get("SignatureVersion"))
        algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(version)  # SNS v1 is SHA1 by definition
        if algorithm is None:
            raise Refused("bad_sns_signature", "SignatureVersion must be 1 or 2")
        _check_age(_parse_time(message.get("Timestamp")), self._max_age, self._clock())
        cert_url = str(message.get("SigningCertURL") or message.get("SigningCertUrl") or "")
        check_sns_url(cert_url)
        if not urlsplit(cert_url).path.endswith(".pem"):
            raise Refused("untrusted_sns_url", "the signing certificate URL must name a .pem file")
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        except (binascii.Error, ValueError):
            raise Refused("bad_sns_signature", "the signature is not base64") from None
        key = await self._key(cert_url)
        try:
            key.verify(signature, sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise Refused("bad_sns_signature", "the SNS signature does not verify") from None

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        if url in self._keys:
            return self._keys[url]
        try:
            cert = x509.load_pem_x509_certificate(await self._fetch(url))
        except (ValueError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Refused("sns_certificate_unavailable", f"the signing certificate could not be read: {exc}") from None
        now = datetime.now(UTC)
        key = cert.public_key()
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc) or not isinstance(key, rsa.RSAPublicKey):
            raise Refused("sns_certificate_invalid", "the signing certificate is expired or not RSA")
        self._keys[url] = key
        while len(self._keys) > 32:
            self._keys.popitem(last=False)
        return key


def verify_sendgrid(public_key: str, signature: str, timestamp: str, body: bytes, *, max_age: float,
                    now: float) -> None:
    if not _UNIX_TIME.fullmatch(timestamp):
        raise Refused("bad_signature", "the SendGrid timestamp header is missing")
    _check_age(float(timestamp), max_age, now)
    try:
        key = _load_public_key(public_key)
        raw = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise Refused("bad_signature", "the SendGrid signature is not base64") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Refused("webhook_not_configured", "the SendGrid verification key is not an EC key")
    try:
        key.verify(raw, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Refused("bad_signature", "the SendGrid signature does not verify") from None


def verify_mailgun(signing_key: str, signed: dict[str, Any], *, max_age: float, now: float) -> str:
    """Checks the signature block; returns the token, which the caller must then accept only once."""
    timestamp, token, signature = (str(signed.get(k, "")) for k in ("timestamp", "token", "signature"))
    if not _UNIX_TIME.fullmatch(timestamp) or not token or not signature or len(token) > 256:
        raise Refused("bad_signature", "the Mailgun signature block is incomplete")
    _check_age(float(timestamp), max_age, now)
    expected = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.lower().encode("utf-8", "replace")):
        raise Refused("bad_signature", "the Mailgun signature does not verify")
    return token


def _load_public_key(text: str) -> Any:
    text = text.strip()
    if text.startswith("-----BEGIN"):
        return serialization.load_pem_public_key(text.encode())
    return serialization.load_der_public_key(base64.b64decode(text, validate=True))


def _check_age(when: float, max_age: float, now: float) -> None:
    if abs(now - when) > max_age:
        raise Refused("stale_timestamp", f"the webhook's timestamp is outside the {max_age:.0f} s window")


def _parse_time(value: Any) -> float:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        raise Refused("bad_timestamp", "the timestamp is not ISO 8601") from None


# --- reports ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    kind: str  # delivered | bounced | complained
    email: str
    message_id: str | None
    provider_message_id: str | None
    provider_event_id: str
    occurred_at: datetime
    detail: str | None = None
    permanent: bool = True


def _when(value: Any) -> datetime:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.now(UTC)


def ses_reports(notification: dict[str, Any], event_id: str) -> list[Report]:
    kind = str(notification.get("notificationType") or notification.get("eventType") or "")
    mail = notification.get("mail") or {}
    ids = (mail.get("commonHeaders") or {}).get("messageId"), mail.get("messageId")
    if kind == "Delivery":
        d = notification.get("delivery") or {}
        return [Report("delivered", r, *ids, f"{event_id}:{r}", _when(d.get("timestamp")), d.get("smtpResponse"))
                for r in d.get("recipients", [])]
    if kind == "Bounce":
        b = notification.get("bounce") or {}
        return [Report("bounced", r.get("emailAddress", ""), *ids, f"{event_id}:{r.get('emailAddress')}",
                       _when(b.get("timestamp")), r.get("diagnosticCode") or b.get("bounceSubType"),
                       b.get("bounceType") == "Permanent") for r in b.get("bouncedRecipients", [])]
    if kind == "Complaint":
        c = notification.get("complaint") or {}
        return [Report("complained", r.get("emailAddress", ""), *ids, f"{event_id}:{r.get('emailAddress')}",
                       _when(c.get("timestamp")), c.get("complaintFeedbackType"))
                for r in c.get("complainedRecipients", [])]
    return []


_SENDGRID_KINDS = {"delivered": "delivered", "bounce": "bounced", "dropped": "bounced", "spamreport": "complained"}


def sendgrid_reports(events: list[Any]) -> list[Report]:
    out = []
    for e in events:
        if not isinstance(e, dict) or e.get("event") not in _SENDGRID_KINDS:
            continue
        out.append(Report(_SENDGRID_KINDS[e["event"]], str(e.get("email", "")), e.get("smtp-id"),
                          str(e.get("sg_message_id", "")).split(".")[0] or None, str(e.get("sg_event_id", "")),
                          _when(e.get("timestamp")), e.get("reason") or e.get("response"),
                          e.get("type") != "blocked"))
    return out


def mailgun_reports(data: dict[str, Any]) -> list[Report]:
    event = data.get("event")
    headers = (data.get("message") or {}).get("headers") or {}
    message_id = headers.get("message-id")
    common = (str(data.get("recipient", "")), message_id, message_id, str(data.get("id", "")),
              _when(data.get("timestamp")))
    status = data.get("delivery-status") or {}
    if event == "delivered":
        return [Report("delivered", *common, status.get("message"))]
    if event == "failed" and data.get("severity") == "permanent":
        return [Report("bounced", *common, status.get("message") or data.get("reason"), True)]
    if event == "complained":
        return [Report("complained", *common)]
    return []  # temporary failures: Mailgun retries them itself


# --- matching and publishing -------------------------------------------------------------------------------


class WebhookService:
    def __init__(self, settings: Settings, publisher: EventPublisher, store: ReadStore, fetch: Fetch | None,
                 seen: SeenOnce) -> None:
        self.settings = settings
        self.seen = seen
        self.publisher = publisher
        self.store = store
        self._session: aiohttp.ClientSession | None = None
        self.sns = SnsVerifier(fetch or self._https_get, topic_arns=settings.webhook_sns_topic_arns,
                               max_age=settings.webhook_max_age)
        self._fetch = fetch or self._https_get

    @asynccontextmanager
    async def once(self, provider: str, token: str, *, signed_at: float, now: float) -> AsyncIterator[None]:
        """Lets a verified webhook through once across every API replica; forgotten again when handling it
        fails, so the provider's own retry of the same delivery is not mistaken for a replay."""
        try:
            first = await self.seen.first_time(provider, token, expires_at=signed_at + self.settings.webhook_max_age,
                                               now=now)
        except SeenUnavailable as exc:
            log.error("%s webhook refused: replay store unavailable (%s)", provider, exc)
            raise  # 503 database_unavailable (json_errors): the provider delivers it again later
        if not first:
            log.warning("%s webhook refused: replayed_request", provider)
            raise ApiError(403, "replayed_request", "this webhook was already received")
        try:
            yield
        except BaseException:
            await self.seen.forget(provider, token)
            raise

    async def _https_get(self, url: str) -> bytes:
        check_sns_url(url)  # again, right where the request is made
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), trust_env=False)
        async with self._session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise aiohttp.ClientError(f"HTTP {response.status}")
            return await response.content.read(64 * 1024)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def confirm_subscription(self, url: str) -> None:
        check_sns_url(url)
        await self._fetch(url)

    async def publish(self, provider: str, reports: list[Report]) -> tuple[int, int]:
        """Publish the matched reports (acks=all); return (published, unmatched)."""
        sends, published, unmatched = [], 0, 0
        for report in reports:
            found = await self._match(report)
            if found is None:
                unmatched += 1
                log.info("%s %s report for an unknown message (%s) ignored", provider, report.kind,
                         report.message_id or report.provider_message_id)
                continue
            job_id, userid, email = found
            cls = {"delivered": RecipientDelivered, "bounced": RecipientBounced,
                   "complained": RecipientComplained}[report.kind]
            extra = {"permanent": report.permanent} if cls is RecipientBounced else {}
            event = cls(job_id=job_id, userid=userid, email=email, provider=provider,  # type: ignore[arg-type]
                        message_id=report.message_id, provider_message_id=report.provider_message_id,
                        provider_event_id=report.provider_event_id or "-",
                        detail=(report.detail or None) and str(report.detail)[:2000],
                        occurred_at=report.occurred_at, **extra)
            sends.append(await self.publisher.send(event))
            published += 1
            # A hard bounce or a complaint also puts the learner on the company's suppression list.
            suppression = await suppression_for_report(self.store, event)
            if suppression is not None:
                sends.append(await self.publisher.send(suppression))
        await asyncio.gather(*sends)
        return published, unmatched

    async def _match(self, report: Report) -> tuple[str, int, str] | None:
        if report.message_id:
            wanted = report.message_id.strip()
            wanted = wanted if wanted.startswith("<") else f"<{wanted}>"
            rows = await self.store._rows(  # the read store's pooled query helper
                "SELECT job_id, userid, email FROM job_recipients WHERE message_id = %s LIMIT 2", (wanted,))
            if len(rows) == 1:
                return rows[0]["job_id"], rows[0]["userid"], rows[0]["email"]
        if report.provider_message_id:
            rows = await self.store._rows(
                "SELECT job_id, userid, email FROM job_recipients WHERE provider_message_id = %s"
                " AND lower(email) = lower(%s) LIMIT 2", (report.provider_message_id, report.email))
            if len(rows) == 1:
                return rows[0]["job_id"], rows[0]["userid"], rows[0]["email"]
        return None


# --- routes -----------------------------------------------------------------------------------------------------

WEBHOOKS: web.AppKey[WebhookService] = web.AppKey("webhooks", WebhookService)


async def _body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_WEBHOOK_BYTES:
        raise ApiError(413, "body_too_large", f"webhooks are limited to {MAX_WEBHOOK_BYTES} bytes")
    body = await request.content.read(MAX_WEBHOOK_BYTES + 1)
    if len(body) > MAX_WEBHOOK_BYTES:
        raise ApiError(413, "body_too_large", f"webhooks are limited to {MAX_WEBHOOK_BYTES} bytes")
    return body


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
    now = time.time()
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
                            signed_at=_parse_time(message.get("Timestamp")), now=now):
        published, unmatched = await service.publish("ses", reports)
    return json_response({"published": published, "unmatched": unmatched})


async def sendgrid_webhook(request: web.Request) -> web.Response:
    service = request.app[WEBHOOKS]
    key = service.settings.webhook_sendgrid_public_key
    body = await _body(request)
    timestamp, now = request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp", ""), time.time()
    try:
        if not key:
            raise Refused("webhook_not_configured", "no SendGrid verification key is configured")
        verify_sendgrid(key, request.headers.get("X-Twilio-Email-Event-Webhook-Signature", ""), timestamp, body,
                        max_age=service.settings.webhook_max_age, now=now)
    except Refused as exc:
        raise _refused("sendgrid", exc) from None
    events = _json(body)
    # Keyed by what was signed, not by the signature: an ECDSA signature has a second valid form (s -> n - s).
    async with service.once("sendgrid", token_of(timestamp, body), signed_at=float(timestamp), now=now):
        published, unmatched = await service.publish("sendgrid", sendgrid_reports(events if isinstance(events, list)
                                                                                  else []))
    return json_response({"published": published, "unmatched": unmatched})


async def mailgun_webhook(request: web.Request) -> web.Response:
    service = request.app[WEBHOOKS]
    key = service.settings.webhook_mailgun_signing_key
    payload = _json(await _body(request))
    if not isinstance(payload, dict):
        raise ApiError(400, "bad_webhook", "a Mailgun webhook is a JSON object")
    now = time.time()
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
    async with service.once("mailgun", token, signed_at=float(signed["timestamp"]), now=now):
        published, unmatched = await service.publish("mailgun", mailgun_reports(data if isinstance(data, dict)
                                                                                else {}))
    return json_response({"published": published, "unmatched": unmatched})


def setup(app: web.Application, settings: Settings, publisher: EventPublisher, store: ReadStore, *,
          fetch: Fetch | None = None, seen: SeenOnce | None = None) -> None:
    """Add /webhooks/{ses,sendgrid,mailgun}. ``fetch`` replaces the https GET of SNS certificates and
    subscription URLs in tests only; the SNS host check happens before it is called either way. ``seen`` is
    the replay store every API replica shares (default: Postgres through the read store's pool)."""
    shared = seen if seen is not None else PostgresSeen(store.pool, settings.projection_schema)
    service = WebhookService(settings, publisher, store, fetch, shared)
    app[WEBHOOKS] = service
    app.router.add_post("/webhooks/ses", ses_webhook)
    app.router.add_post("/webhooks/sendgrid", sendgrid_webhook)
    app.router.add_post("/webhooks/mailgun", mailgun_webhook)

    async def _close(app: web.Application) -> None:
        await service.close()

    app.on_cleanup.append(_close)
