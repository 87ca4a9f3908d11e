"""Certificate store on AWS S3 or Cloudflare R2 (the same S3 API through boto3), returning presigned GET URLs.

Cloudflare R2: ``backend="r2"``, ``endpoint_url="https://<account_id>.r2.cloudflarestorage.com"``,
``region="auto"`` and an R2 API token's access key id / secret. Presigned URLs work the same way there.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from adapters.storage.base import ObjectNotFound, StorageUnavailable, StoredObject, check_key

T = TypeVar("T")
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


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
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"{backend}-store")

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
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": bytes(data),
            "ContentType": content_type,
            "Metadata": {"sha256": digest.hex()},
        }
        if self.send_checksum:  # the store verifies the body it received against it
            args["ChecksumSHA256"] = base64.b64encode(digest).decode()
        await self._call(self._client.put_object, **args)
        return StoredObject(key, self.presigned_url(key), digest.hex(), len(data), self.backend)

    def presigned_url(self, key: str, seconds: int | None = None) -> str:
        """A GET URL valid for ``seconds`` (default: the configured lifetime); signing is local, no I/O."""
        return str(self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=seconds or self.presign_seconds,
        ))

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
        """Stop the thread pool (waits for uploads in flight)."""
        self._pool.shutdown(wait=True)
