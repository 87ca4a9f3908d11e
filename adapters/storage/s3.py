"""Certificate store on AWS S3 or Cloudflare R2 (the same S3 API), returning presigned GET URLs.

Cloudflare R2: ``backend="r2"``, ``endpoint_url="https://<account_id>.r2.cloudflarestorage.com"``,
``region="auto"`` and an R2 API token's access key id / secret. Presigned URLs work the same way there.

The hot path (one upload and one presigned URL per certificate) is signed by ``adapters.storage.sigv4`` and sent
through botocore's own HTTP session (same CA bundle, proxies, pool and timeouts), off the event loop; boto3
decides once where those requests go (endpoint, region, path or virtual-host style) and serves the rest
(get, exists, bucket set-up). Uploads went from 1.44 ms of worker CPU to ~0.3 ms (bench/certificate_job.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.session
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.httpsession import URLLib3Session

from adapters.storage.base import ObjectNotFound, StorageUnavailable, StoredObject, check_key
from adapters.storage.sigv4 import Credentials, SigV4Signer, encode_path
from resilience.backoff import backoff

T = TypeVar("T")
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
PUT_ATTEMPTS = 3  # as botocore's standard retry mode: a dead endpoint must fail over to local storage fast
_RETRYABLE_STATUS = {429, 500, 502, 503, 504}
_PROBE_KEY = "offload-endpoint-probe"  # never sent: only where botocore would send it is read
# Written (empty) by ``check``, which health calls only while the store is lost. A PUT, because that is the
# permission a worker has for sure: HEAD Bucket needs s3:ListBucket, and a HEAD of a missing key without it
# answers 403 whether the store is up or not.
_HEALTH_KEY = "offload-health-check"


class _Endpoint:
    """Where botocore sends requests for one bucket's objects: URL prefix, Host as signed, path prefix."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.prefix = url.split("?", 1)[0].removesuffix(_PROBE_KEY)
        self.path = parts.path.removesuffix(_PROBE_KEY)
        # As botocore signs it: no port when it is the scheme's default.
        default = {"http": 80, "https": 443}[parts.scheme]
        self.host = (parts.hostname or "") if parts.port in (None, default) else parts.netloc


class S3CertificateStore:
    """boto3 runs in a small thread pool of its own, so uploads never block the Faust event loop.

    Any failure except "no such key" becomes :class:`StorageUnavailable` after botocore's (few) retries,
    which is the signal for the certificate agent to fall back to local storage.
    """

    def __init__(self, *, bucket: str, region: str, endpoint_url: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 presign_seconds: int = 7 * 24 * 3600, backend: str = "s3", max_workers: int = 16,
                 send_checksum: bool = True) -> None:
        if not 1 <= presign_seconds <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"presign_seconds must be 1..{MAX_PRESIGN_SECONDS}")
        self.bucket, self.region, self.backend = bucket, region, backend
        self.presign_seconds = presign_seconds
        self.send_checksum = send_checksum
        config = Config(
            region_name=region,
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},  # small: a dead endpoint must fail over fast
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=max_workers,
            # A custom endpoint (moto, MinIO, an IP) has no per-bucket DNS names.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            # boto3 >= 1.36 adds CRC32 checksums by default; send only the SHA-256 we choose below.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        core = botocore.session.get_session()
        self._session = boto3.session.Session(aws_access_key_id=access_key_id,
                                              aws_secret_access_key=secret_access_key, botocore_session=core)
        self._client = self._session.client("s3", endpoint_url=endpoint_url, config=config)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"{backend}-store")
        self._signer = SigV4Signer(region)
        self._http = URLLib3Session(verify=core.get_config_variable("ca_bundle") or True,
                                    timeout=(5, 30), max_pool_connections=max_workers)
        # Found on first use (they need credentials, which a worker without cloud settings may lack).
        self._credentials: Any = None  # botocore's resolved credentials (static, or refreshed by botocore)
        self._endpoints: tuple[_Endpoint, _Endpoint] | None = None  # (PutObject, presigned GetObject)
        self._lock = threading.Lock()

    def _resolved(self) -> tuple[_Endpoint, _Endpoint]:
        """Where uploads and presigned GETs go, asked of botocore once; blocking (first call may fetch credentials)."""
        with self._lock:
            if self._endpoints is None:
                try:
                    put = self._request_url("PutObject", self._client.put_object, Bucket=self.bucket,
                                            Key=_PROBE_KEY, Body=b"")
                    get = self._client.generate_presigned_url(
                        "get_object", Params={"Bucket": self.bucket, "Key": _PROBE_KEY}, ExpiresIn=60)
                except BotoCoreError as exc:  # no credentials, a bad endpoint
                    raise StorageUnavailable(f"{self.backend} bucket {self.bucket}: {exc}") from exc
                self._endpoints = (_Endpoint(put), _Endpoint(get))
            return self._endpoints

    def _request_url(self, operation: str, method: Any, **params: Any) -> str:
        """The URL botocore would send ``operation`` to, found without sending anything."""
        seen: list[str] = []

        def capture(request: AWSRequest, **_: Any) -> AWSResponse:
            seen.append(request.url)
            raise _Captured

        event = f"before-send.s3.{operation}"
        self._client.meta.events.register_first(event, capture)
        try:
            method(**params)
        except _Captured:
            pass
        finally:
            self._client.meta.events.unregister(event, capture)
        return seen[0]

    def _signing_credentials(self) -> Credentials:
        if self._credentials is None:
            self._credentials = self._session.get_credentials()
            if self._credentials is None:
                raise StorageUnavailable(f"{self.backend} bucket {self.bucket}: no AWS credentials found")
        frozen = self._credentials.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    async def _call(self, fn: Any, /, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, partial(fn, **kwargs))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                raise ObjectNotFound(kwargs.get("Key", "")) from exc
            raise StorageUnavailable(f"{self.backend} bucket {self.bucket}: {exc}") from exc
        except BotoCoreError as exc:  # connection refused, DNS, timeouts, missing credentials
            raise StorageUnavailable(f"{self.backend} bucket {self.bucket}: {exc}") from exc

    async def put(self, key: str, data: bytes, *, content_type: str = "application/pdf") -> StoredObject:
        """Upload (the same key and bytes again simply rewrites the same object) and presign a GET URL."""
        check_key(key)
        digest = hashlib.sha256(data).digest()
        headers = {"content-type": content_type, "x-amz-meta-sha256": digest.hex()}
        if self.send_checksum:  # the store verifies the body it received against it
            headers["x-amz-checksum-sha256"] = base64.b64encode(digest).decode()
        loop = asyncio.get_running_loop()
        url = await loop.run_in_executor(self._pool, self._put_object, key, bytes(data), headers, digest.hex())
        return StoredObject(key, url, digest.hex(), len(data), self.backend)

    def _put_object(self, key: str, body: bytes, headers: dict[str, str], payload_sha256: str) -> str:
        """PutObject, signed here and retried like botocore's standard mode, then the presigned GET URL.

        Runs in the store's thread pool: neither the request nor any signing touches the event loop.
        """
        endpoint = self._resolved()[0]
        path = endpoint.path + encode_path(key)
        problem = ""
        for attempt in range(1, PUT_ATTEMPTS + 1):
            signed = self._signer.sign_headers("PUT", endpoint.host, path, headers, payload_sha256,
                                               self._signing_credentials(), datetime.now(UTC))
            request = AWSRequest(method="PUT", url=endpoint.prefix + encode_path(key), data=body, headers=signed)
            try:
                response = self._http.send(request.prepare())
            except BotoCoreError as exc:  # connection refused, DNS, timeouts
                problem = str(exc)
            else:
                if response.status_code < 300:
                    return self.presigned_url(key)
                problem = f"PutObject answered {response.status_code}: {_error_code(response.content)}"
                if response.status_code not in _RETRYABLE_STATUS:
                    break
            if attempt < PUT_ATTEMPTS:
                time.sleep(backoff(attempt, base=0.1, cap=2.0))
        raise StorageUnavailable(f"{self.backend} bucket {self.bucket}: {problem}")

    def presigned_url(self, key: str, seconds: int | None = None) -> str:
        """A GET URL valid for ``seconds`` (default: the configured lifetime); signing is local, no I/O once the
        endpoint and credentials are known (the first call may look them up: call it off the event loop)."""
        endpoint = self._resolved()[1]
        query = self._signer.presign_query("GET", endpoint.host, endpoint.path + encode_path(key),
                                           seconds or self.presign_seconds, self._signing_credentials(),
                                           datetime.now(UTC))
        return f"{endpoint.prefix}{encode_path(key)}?{query}"

    async def get(self, key: str) -> bytes:
        check_key(key)

        def read() -> bytes:
            return bytes(self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

        return await self._call(read)

    async def exists(self, key: str) -> bool:
        check_key(key)
        try:
            await self._call(self._client.head_object, Bucket=self.bucket, Key=key)
        except ObjectNotFound:
            return False
        return True

    async def check(self) -> None:
        """An empty object written at ``offload-health-check``: what ``put`` needs of the bucket."""
        await self._call(self._client.put_object, Bucket=self.bucket, Key=_HEALTH_KEY, Body=b"")

    async def ensure_bucket(self) -> None:
        """Create the bucket if missing (development and tests; production buckets are made by ops)."""
        try:
            await self._call(self._client.head_bucket, Bucket=self.bucket)
            return
        except ObjectNotFound:
            pass
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.region not in ("us-east-1", "auto"):
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            await self._call(self._client.create_bucket, **args)
        except StorageUnavailable as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc):
                raise

    def close(self) -> None:
        """Stop the thread pool (waits for uploads in flight) and close the HTTP connections."""
        self._pool.shutdown(wait=True)
        self._http.close()


class _Captured(Exception):
    """Stops a botocore call at the point it would send its request."""


def _error_code(body: bytes) -> str:
    """S3's error code from its XML error body (``<Code>NoSuchBucket</Code>``), else the start of the body."""
    text = body[:2000].decode("utf-8", "replace")
    start, end = text.find("<Code>"), text.find("</Code>")
    return text[start + 6:end] if 0 <= start < end else (text[:200] or "(empty body)")
