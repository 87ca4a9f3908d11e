"""Provider webhook signatures with locally made keys and certificates: SNS (v1 and v2, certificate host check,
topic check), SendGrid ECDSA, Mailgun HMAC; and how provider reports are read."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from api.webhooks import (
    Refused,
    SnsVerifier,
    check_sns_url,
    mailgun_reports,
    sendgrid_reports,
    ses_reports,
    sns_string_to_sign,
    verify_mailgun,
    verify_sendgrid,
)
from api.webhooks.signatures import parse_time

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-events"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"


def make_certificate(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def sns_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sns_message(key: rsa.RSAPrivateKey, *, version: str = "2", kind: str = "Notification", **fields) -> dict:
    message = {"Type": kind, "MessageId": "mid-1", "TopicArn": TOPIC, "Message": json.dumps({"hello": "world"}),
               "Timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "SignatureVersion": version,
               "SigningCertURL": CERT_URL}
    if kind != "Notification":
        message.update(Token="tok", SubscribeURL="https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription")
    message.update(fields)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    message["Signature"] = base64.b64encode(key.sign(sns_string_to_sign(message), padding.PKCS1v15(),
                                                     algorithm)).decode()
    return message


def verifier(sns_key, fetched: list[str] | None = None) -> SnsVerifier:
    pem = make_certificate(sns_key)

    async def fetch(url: str) -> bytes:  # the test hook: the certificate comes from memory, not from AWS
        if fetched is not None:
            fetched.append(url)
        return pem

    return SnsVerifier(fetch, topic_arns=[TOPIC], max_age=3600)


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("kind", ["Notification", "SubscriptionConfirmation"])
async def test_sns_signatures_of_both_versions_verify(sns_key, version, kind):
    await verifier(sns_key).verify(sns_message(sns_key, version=version, kind=kind))


async def test_a_tampered_sns_message_is_refused(sns_key):
    message = sns_message(sns_key)
    message["Message"] = json.dumps({"hello": "mallory"})
    with pytest.raises(Refused, match="does not verify"):
        await verifier(sns_key).verify(message)


@pytest.mark.parametrize("url", [
    "http://sns.eu-west-1.amazonaws.com/cert.pem",
    "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem",
    "https://evil.example/sns.eu-west-1.amazonaws.com/cert.pem",
    "https://sns.eu-west-1.amazonaws.com:8443/cert.pem",
    "https://user@sns.eu-west-1.amazonaws.com/cert.pem",
    "https://s3.amazonaws.com/cert.pem",
    "https://127.0.0.1/cert.pem",
])
async def test_the_certificate_is_fetched_only_from_an_sns_host_over_https(sns_key, url):
    fetched: list[str] = []
    with pytest.raises(Refused) as refused:
        await verifier(sns_key, fetched).verify(sns_message(sns_key, SigningCertURL=url))
    assert refused.value.code == "untrusted_sns_url" and fetched == []


async def test_sns_refuses_an_unknown_topic_a_stale_message_and_a_bad_version(sns_key):
    for fields, code in (({"TopicArn": "arn:aws:sns:eu-west-1:999999999999:theirs"}, "unknown_sns_topic"),
                         ({"Timestamp": "2020-01-01T00:00:00Z"}, "stale_timestamp"),
                         ({"SignatureVersion": "3"}, "bad_sns_signature")):
        with pytest.raises(Refused) as refused:
            await verifier(sns_key).verify(sns_message(sns_key, version="2", **fields) | fields)
        assert refused.value.code == code


def test_subscribe_urls_are_checked_like_certificate_urls():
    check_sns_url("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=x")
    with pytest.raises(Refused):
        check_sns_url("https://169.254.169.254/?Action=ConfirmSubscription")


# --- SendGrid ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_der_b64(key: ec.EllipticCurvePrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()


def sendgrid_sign(key: ec.EllipticCurvePrivateKey, timestamp: str, body: bytes) -> str:
    return base64.b64encode(key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()


def test_sendgrid_ecdsa_signature_verifies_with_der_or_pem_keys(ec_key):
    body, ts = b'[{"event":"delivered"}]', str(int(time.time()))
    signature = sendgrid_sign(ec_key, ts, body)
    verify_sendgrid(public_der_b64(ec_key), signature, ts, body, max_age=600, now=time.time())
    pem = ec_key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    verify_sendgrid(pem, signature, ts, body, max_age=600, now=time.time())
    for bad_body, bad_ts, bad_sig, code in ((body + b" ", ts, signature, "bad_signature"),
                                            (body, str(int(ts) + 1), signature, "bad_signature"),
                                            (body, ts, "not base64!", "bad_signature"),
                                            (body, "", signature, "bad_signature")):
        with pytest.raises(Refused) as refused:
            verify_sendgrid(public_der_b64(ec_key), bad_sig, bad_ts, bad_body, max_age=600, now=time.time())
        assert refused.value.code == code
    old = str(int(time.time()) - 7200)
    with pytest.raises(Refused, match="window"):
        verify_sendgrid(public_der_b64(ec_key), sendgrid_sign(ec_key, old, body), old, body, max_age=600,
                        now=time.time())


# --- Mailgun ------------------------------------------------------------------------------------------------


def mailgun_signature(key: str, timestamp: str, token: str) -> dict[str, str]:
    return {"timestamp": timestamp, "token": token,
            "signature": hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()}


def test_mailgun_hmac_verifies_and_refuses_wrong_key_stale_and_incomplete():
    now = time.time()
    signed = mailgun_signature("mg-signing-key", str(int(now)), "token-1")
    assert verify_mailgun("mg-signing-key", signed, max_age=600, now=now) == "token-1"  # accepted once: security.seen
    with pytest.raises(Refused, match="does not verify"):
        verify_mailgun("another-key", mailgun_signature("mg-signing-key", str(int(now)), "token-2"), max_age=600,
                       now=now)
    with pytest.raises(Refused, match="window"):
        verify_mailgun("mg-signing-key", mailgun_signature("mg-signing-key", str(int(now) - 3600), "token-3"),
                       max_age=600, now=now)
    with pytest.raises(Refused, match="incomplete"):
        verify_mailgun("mg-signing-key", {}, max_age=600, now=now)


# --- reports ----------------------------------------------------------------------------------------------


def test_provider_reports_are_read_into_delivered_bounced_and_complained():
    mail = {"messageId": "ses-1", "commonHeaders": {"messageId": "<abc@offload>"}}
    bounce = ses_reports({"notificationType": "Bounce", "mail": mail, "bounce": {
        "bounceType": "Transient", "bouncedRecipients": [{"emailAddress": "a@x.org", "diagnosticCode": "552"}],
        "timestamp": "2026-01-01T00:00:00Z"}}, "n1")
    assert [(r.kind, r.email, r.message_id, r.provider_message_id, r.permanent) for r in bounce] == [
        ("bounced", "a@x.org", "<abc@offload>", "ses-1", False)]
    complaint = ses_reports({"eventType": "Complaint", "mail": mail,
                             "complaint": {"complainedRecipients": [{"emailAddress": "b@x.org"}]}}, "n2")
    assert complaint[0].kind == "complained"
    delivered = ses_reports({"notificationType": "Delivery", "mail": mail,
                             "delivery": {"recipients": ["c@x.org"]}}, "n3")
    assert delivered[0].kind == "delivered" and delivered[0].provider_event_id == "n3:c@x.org"
    naive = ses_reports({"notificationType": "Delivery", "mail": mail,
                         "delivery": {"recipients": ["c@x.org"], "timestamp": "2026-01-01T00:00:00"}}, "n4")
    assert naive[0].occurred_at == datetime(2026, 1, 1, tzinfo=UTC)  # no offset: UTC, as the providers mean it
    assert bounce[0].occurred_at == datetime(2026, 1, 1, tzinfo=UTC)
    sg = sendgrid_reports([{"event": "bounce", "email": "d@x.org", "smtp-id": "<m@o>", "sg_event_id": "e1",
                            "sg_message_id": "sg1.filter", "timestamp": 1_800_000_000},
                           {"event": "open", "email": "d@x.org"}, "junk"])
    assert [(r.kind, r.message_id, r.provider_message_id) for r in sg] == [("bounced", "<m@o>", "sg1")]
    mg = mailgun_reports({"event": "failed", "severity": "temporary", "recipient": "e@x.org"})
    assert mg == []
    mg = mailgun_reports({"event": "complained", "recipient": "e@x.org", "id": "ev",
                          "message": {"headers": {"message-id": "m@o"}}, "timestamp": 1_800_000_000.5})
    assert [(r.kind, r.message_id) for r in mg] == [("complained", "m@o")]


def test_an_sns_timestamp_without_an_offset_is_utc_not_this_machines_zone(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_time("2026-01-01T00:00:00") == parse_time("2026-01-01T00:00:00.000Z") == 1_767_225_600
    finally:
        monkeypatch.undo()
        time.tzset()
    with pytest.raises(Refused, match="ISO 8601"):
        parse_time("yesterday")


@pytest.mark.parametrize("timestamp", [None, "yesterday", 1e20, float("nan")])
def test_a_report_whose_time_cannot_be_read_is_kept_as_now_with_a_warning(timestamp, caplog):
    before = datetime.now(UTC)
    with caplog.at_level(logging.WARNING, logger="api.webhooks.reports"):
        reports = mailgun_reports({"event": "complained", "recipient": "e@x.org", "id": "ev",
                                   "message": {"headers": {"message-id": "m@o"}}, "timestamp": timestamp})
    assert [r.kind for r in reports] == ["complained"]
    assert before <= reports[0].occurred_at <= datetime.now(UTC)
    assert "cannot be read: taken as now" in caplog.text
