"""Checking that a provider webhook is what it says: each provider signs its own way.

- SES via SNS: RSA signature (SignatureVersion 1: SHA1, 2: SHA256) under the certificate at SigningCertURL, which
  must be https on an ``sns.<region>.amazonaws.com`` host; the topic must be one we configured (anyone can get a
  valid SNS signature from a topic of their own). A SubscriptionConfirmation is confirmed the same way.
- SendGrid Event Webhook: ECDSA (P-256, SHA-256) over timestamp + body with the configured public key.
- Mailgun: HMAC-SHA256 of timestamp + token under the webhook signing key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

Fetch = Callable[[str], Awaitable[bytes]]
# sns.<region>.amazonaws.com, sns.us-gov-west-1.amazonaws.com, sns.cn-north-1.amazonaws.com.cn: a region is
# letters-letters-digit (an "s3" or "sns" in that place would be an S3 bucket's virtual host); China regions only
# under amazonaws.com.cn.
SNS_HOST = re.compile(r"sns\.(?:(?!cn-)(?:[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2})\.amazonaws\.com"
                      r"|cn-[a-z]+-[0-9]{1,2}\.amazonaws\.com\.cn)")
_UNIX_TIME = re.compile(r"[0-9]{1,12}")  # ASCII only: "²".isdigit() is true and float("²") raises
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


def check_sns_url(url: str) -> None:
    """Only AWS's own SNS hosts over https: a certificate or subscription URL anywhere else is refused."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port out of range or not a number
    except ValueError:  # also a broken [IPv6] host: refused like any other foreign URL, never a 500
        port = -1
        parts = urlsplit("")
    if parts.scheme != "https" or not parts.hostname or not SNS_HOST.fullmatch(parts.hostname) or port is not None \
            or parts.username or parts.password:
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
        _check_age(parse_time(message.get("Timestamp")), self._max_age, self._clock())
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


def parse_time(value: Any) -> float:
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        raise Refused("bad_timestamp", "the timestamp is not ISO 8601") from None
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()  # UTC, not this machine's zone
