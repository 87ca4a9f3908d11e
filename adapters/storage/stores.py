"""The certificate stores a worker (or the API and CLI, reading certificates back) holds, chosen by name."""

from __future__ import annotations

import asyncio

from adapters.storage.base import CertificateStore, StorageUnavailable, StoredObject
from adapters.storage.local import LocalCertificateStore
from adapters.storage.watch import StoreWatch
from config.settings import Settings
from schemas.events import BatchDispatched


class UnconfiguredStore:
    """A cloud store this worker has no settings for: unavailable, so certificates fall back to local."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    async def put(self, key: str, data: bytes, *, content_type: str = "application/pdf") -> StoredObject:
        raise StorageUnavailable(f"{self.backend} is not configured on this worker")

    async def get(self, key: str) -> bytes:
        raise StorageUnavailable(f"{self.backend} is not configured on this worker")

    async def exists(self, key: str) -> bool:
        raise StorageUnavailable(f"{self.backend} is not configured on this worker")

    async def check(self) -> None:
        raise StorageUnavailable(f"{self.backend} is not configured on this worker")


class CertificateStores:
    """The stores a worker (or the CLI) holds: local disk always, S3 and R2 when configured."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.local = LocalCertificateStore(settings.certificate_storage_root, settings.public_base_url)
        self.cloud: dict[str, CertificateStore] = {}
        self.watches: dict[str, StoreWatch] = {}  # of the cloud stores: which one batches skip now

    async def start(self) -> None:
        if self.cloud:
            return
        from adapters.storage.s3 import S3CertificateStore  # boto3 is slow to import: only where used

        s = self.settings
        secret = s.aws_secret_access_key.get_secret_value() if s.aws_secret_access_key else None
        self.cloud["s3"] = S3CertificateStore(
            bucket=s.certificate_bucket, region=s.certificate_storage_region or s.aws_region,
            endpoint_url=s.certificate_storage_endpoint_url or s.aws_endpoint_url,
            access_key_id=s.aws_access_key_id, secret_access_key=secret,
            presign_seconds=s.certificate_presign_seconds, backend="s3",
        )
        if s.r2_endpoint_url:
            r2_secret = s.r2_secret_access_key.get_secret_value() if s.r2_secret_access_key else None
            self.cloud["r2"] = S3CertificateStore(
                bucket=s.certificate_bucket, region=s.certificate_storage_region or "auto",
                endpoint_url=s.r2_endpoint_url, access_key_id=s.r2_access_key_id, secret_access_key=r2_secret,
                presign_seconds=s.certificate_presign_seconds, backend="r2",
            )
        else:
            self.cloud["r2"] = UnconfiguredStore("r2")
        self.watches = {name: StoreWatch(store, cap=s.breaker_cooldown_seconds) for name, store in self.cloud.items()
                        if not isinstance(store, UnconfiguredStore)}  # which fails at once, and for good

    async def stop(self) -> None:
        for watch in self.watches.values():
            watch.close()
        for store in self.cloud.values():
            close = getattr(store, "close", None)  # optional: only the S3/R2 stores hold a client to close
            if close is not None:
                await asyncio.to_thread(close)
        self.cloud = {}

    def by_backend(self, backend: str) -> CertificateStore:
        """The store a certificate was recorded in (``job_recipients.provider``)."""
        if backend == "local":
            return self.local
        return self.cloud.get(backend) or UnconfiguredStore(backend)

    def watch_of(self, store: CertificateStore) -> StoreWatch | None:
        """The watch of a cloud store this worker holds (None for local disk, or before ``start``)."""
        watch = self.watches.get(store.backend)
        return watch if watch is not None and watch.store is store else None

    def for_batch(self, batch: BatchDispatched) -> tuple[CertificateStore, CertificateStore | None]:
        """Primary store and the fallback for when it is unavailable (local batches have none)."""
        if batch.route == "local":
            return self.local, None
        return self.by_backend(batch.provider), self.local
