"""The hand-made SigV4 signer gives the very signatures botocore gives for the same request at the same time."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
import botocore.auth
import pytest
from botocore.config import Config

from adapters.storage.sigv4 import Credentials, SigV4Signer

NOW = datetime(2026, 11, 30, 12, 34, 56, tzinfo=UTC)
CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None)
CASES = [  # (endpoint, region, session token): moto/MinIO path style, AWS virtual-host style, R2
    ("http://127.0.0.1:5001", "eu-west-1", None),
    (None, "eu-west-1", "session/token+with=odd chars"),
    ("https://account.r2.cloudflarestorage.com", "auto", None),
]
KEY = "company-7/job-abc.1/12345-ABCD-EFGH-JKMN-PQRS.pdf"


@pytest.fixture(autouse=True)
def frozen_botocore_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: NOW.replace(tzinfo=None))


def client(endpoint: str | None, region: str, token: str | None) -> Any:
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=CREDS.access_key,
        aws_secret_access_key=CREDS.secret_key, aws_session_token=token,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path" if endpoint else "auto"},
                      request_checksum_calculation="when_required"))


@pytest.mark.parametrize(("endpoint", "region", "token"), CASES)
def test_presigned_get_equals_botocores(endpoint: str | None, region: str, token: str | None) -> None:
    url = client(endpoint, region, token).generate_presigned_url(
        "get_object", Params={"Bucket": "my-bucket", "Key": KEY}, ExpiresIn=3600)
    parts = urlsplit(url)
    ours = SigV4Signer(region).presign_query("GET", parts.netloc, parts.path, 3600,
                                             Credentials(CREDS.access_key, CREDS.secret_key, token), NOW)
    assert dict(parse_qsl(ours)) == dict(parse_qsl(parts.query))
    assert "X-Amz-Signature" in ours


@pytest.mark.parametrize(("endpoint", "region", "token"), CASES)
def test_signed_put_headers_equal_botocores(endpoint: str | None, region: str, token: str | None) -> None:
    body = b"%PDF-1.7 certificate"
    digest = hashlib.sha256(body).digest()
    sent: dict[str, Any] = {}

    class Sent(Exception):
        pass

    def capture(request: Any, **_: Any) -> None:
        sent.update(url=request.url, headers={k.lower(): v.decode() if isinstance(v, bytes) else v
                                              for k, v in request.headers.items()})
        raise Sent

    s3 = client(endpoint, region, token)
    s3.meta.events.register_first("before-send.s3.PutObject", capture)
    with pytest.raises(Sent):
        s3.put_object(Bucket="my-bucket", Key=KEY, Body=body, ContentType="application/pdf",
                      Metadata={"sha256": digest.hex()}, ChecksumSHA256=base64.b64encode(digest).decode())
    parts = urlsplit(sent["url"])
    headers = {"content-type": "application/pdf", "x-amz-meta-sha256": digest.hex(),
               "x-amz-checksum-sha256": base64.b64encode(digest).decode()}
    ours = SigV4Signer(region).sign_headers("PUT", parts.netloc, parts.path, headers, digest.hex(),
                                            Credentials(CREDS.access_key, CREDS.secret_key, token), NOW)
    assert ours["authorization"] == sent["headers"]["authorization"]
    for name in ("x-amz-date", "x-amz-content-sha256", *(["x-amz-security-token"] if token else [])):
        assert ours[name] == sent["headers"][name]


def test_a_different_secret_or_second_gives_a_different_signature() -> None:
    signer = SigV4Signer("eu-west-1")
    base = signer.presign_query("GET", "h", "/b/k.pdf", 60, CREDS, NOW)
    assert base != signer.presign_query("GET", "h", "/b/k.pdf", 60, Credentials("AKIDEXAMPLE", "other"), NOW)
    assert base != signer.presign_query("GET", "h", "/b/k.pdf", 60, CREDS, NOW.replace(second=57))
