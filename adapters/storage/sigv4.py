"""AWS Signature Version 4 for S3 (and R2) object requests and presigned URLs, without botocore's machinery.

boto3 cost the worker 1.44 ms of CPU per ``put_object`` (parameter validation, endpoint rules, event hooks,
serialisation) and 0.18 ms per ``generate_presigned_url``; the signature itself is a few HMACs (~0.03 ms here).
The rules are AWS's ("Authenticating Requests: AWS Signature Version 4", S3 flavour: the path is encoded once,
not twice, and the payload hash travels in ``x-amz-content-sha256``). ``tests/unit/test_sigv4.py`` checks the
output against botocore's own signer for the same request and time.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


def encode_path(path: str) -> str:
    """An object path as S3 signs and sends it: every byte but unreserved ones and '/' percent-encoded."""
    return quote(path, safe="/~")


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _query(params: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))


class SigV4Signer:
    """Signs requests to one region and service; the day's signing key is derived once per secret and day."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._keys: dict[tuple[str, str], bytes] = {}

    def _signing_key(self, secret: str, day: str) -> bytes:
        key = self._keys.get((secret, day))
        if key is None:
            key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret}".encode(), day), self.region), self.service), "aws4_request")
            self._keys = {(secret, day): key}  # yesterday's key is of no more use
        return key

    def _signature(self, credentials: Credentials, stamp: str, canonical_request: str) -> tuple[str, str]:
        scope = f"{stamp[:8]}/{self.region}/{self.service}/aws4_request"
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
        key = self._signing_key(credentials.secret_key, stamp[:8])
        return scope, hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()

    def sign_headers(self, method: str, host: str, path: str, headers: dict[str, str], payload_sha256: str,
                     credentials: Credentials, now: datetime) -> dict[str, str]:
        """The headers to send (``headers`` + x-amz-date, x-amz-content-sha256, token, Authorization).

        ``path`` is already encoded (:func:`encode_path`); ``now`` is UTC.
        """
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
        signed.update({"host": host, "x-amz-date": stamp, "x-amz-content-sha256": payload_sha256})
        if credentials.token:
            signed["x-amz-security-token"] = credentials.token
        names = sorted(signed)
        canonical = "\n".join([method, path, "", *(f"{n}:{signed[n]}" for n in names), "", ";".join(names),
                               payload_sha256])
        scope, signature = self._signature(credentials, stamp, canonical)
        out = {name: value for name, value in signed.items() if name != "host"}  # the HTTP client sends Host
        out["authorization"] = (f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return out

    def presign_query(self, method: str, host: str, path: str, expires: int, credentials: Credentials,
                      now: datetime) -> str:
        """The query string of a presigned URL for ``method`` on ``path`` (encoded), valid ``expires`` seconds."""
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        params = {
            "X-Amz-Algorithm": ALGORITHM,
            "X-Amz-Credential": f"{credentials.access_key}/{stamp[:8]}/{self.region}/{self.service}/aws4_request",
            "X-Amz-Date": stamp,
            "X-Amz-Expires": str(expires),
            "X-Amz-SignedHeaders": "host",
        }
        if credentials.token:
            params["X-Amz-Security-Token"] = credentials.token
        query = _query(params)
        canonical = "\n".join([method, path, query, f"host:{host}", "", "host", UNSIGNED_PAYLOAD])
        _, signature = self._signature(credentials, stamp, canonical)
        return f"{query}&X-Amz-Signature={signature}"
