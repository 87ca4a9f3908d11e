"""Certificate store on local disk or a shared volume; the service serves the files at ``/certificates/``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from pathlib import Path

from adapters.storage.base import ObjectNotFound, StorageUnavailable, StoredObject, check_key


class LocalCertificateStore:
    """Writes each object atomically (temp file, fsync, rename, fsync of the directory) under ``root/key``.

    A reader never sees half a PDF, and a crash leaves either the old file or the new one. Writing the same
    bytes again is a no-op returning the same :class:`StoredObject`; different bytes replace the file.
    """

    backend = "local"

    def __init__(self, root: Path, public_base_url: str) -> None:
        self.root = Path(root).resolve()
        self.public_base_url = public_base_url.rstrip("/")

    def path(self, key: str) -> Path:
        """File of ``key``; ValueError for a key that would leave the root."""
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"object key escapes the store root: {key!r}")
        return path

    def _stored(self, key: str, digest: str, size: int) -> StoredObject:
        return StoredObject(key, f"{self.public_base_url}/certificates/{key}", digest, size, self.backend)

    async def put(self, key: str, data: bytes, *, content_type: str = "application/pdf") -> StoredObject:
        path = self.path(key)
        return await asyncio.to_thread(self._put, key, path, bytes(data))

    def _put(self, key: str, path: Path, data: bytes) -> StoredObject:
        digest = hashlib.sha256(data).hexdigest()
        try:
            if (path.is_file() and path.stat().st_size == len(data)
                    and hashlib.sha256(path.read_bytes()).hexdigest() == digest):
                return self._stored(key, digest, len(data))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "xb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # makes the rename itself durable
            finally:
                os.close(dir_fd)
        except OSError as exc:  # disk full, read-only volume, unmounted share: the store is unusable
            raise StorageUnavailable(f"local certificate store {self.root}: {exc}") from exc
        return self._stored(key, digest, len(data))

    async def get(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def check(self) -> None:
        """A file written, synced and removed in the root: what ``put`` needs of the disk."""
        await asyncio.to_thread(self._check)

    def _check(self) -> None:
        probe = self.root / f".health-{uuid.uuid4().hex}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                with open(probe, "xb") as fh:
                    fh.write(b"\0")
                    fh.flush()
                    os.fsync(fh.fileno())
            finally:
                probe.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"local certificate store {self.root}: {exc}") from exc
