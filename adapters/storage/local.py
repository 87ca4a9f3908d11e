"""Certificate store on local disk or a shared volume; the service serves the files at ``/certificates/``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from adapters.storage.base import ObjectNotFound, StorageUnavailable, StoredObject, check_key

# Most writes one trip to the disk thread makes durable together.
GROUP_MAX = 64


def _start_writeback(fd: int) -> None:
    """Sets the file's pages on their way to the disk now, so that a group's files are all in flight before its first
    fsync, and each fsync waits on writes already under way. In the certificate bench on this machine's ext4 the
    worker's CPU per certificate fell from 0.69-0.90 to 0.64-0.67 ms with it (docs/benchmarks.md).

    Linux starts writing dirty pages out when told they will not be needed (they stay cached until written). Only a
    hint, so a refusal is ignored: each file is still fsynced, and its fsync reports what is wrong with the disk.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


@dataclass(slots=True)
class _Write:
    """One ``put`` waiting for the disk thread: where it goes, the bytes, and the caller's future."""

    key: str
    path: Path
    data: bytes
    done: asyncio.Future[StoredObject]


class _Writes:
    """The puts of one event loop waiting for the disk thread, and the task that takes them there."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queued: list[_Write] = []
        self.task: asyncio.Task[None] | None = None


class LocalCertificateStore:
    """Writes each object atomically (temp file, fsync, rename, fsync of the directory) under ``root/key``.

    A reader never sees half a PDF, and a crash leaves either the old file or the new one. Writing the same
    bytes again is a no-op returning the same :class:`StoredObject`; different bytes replace the file. A key whose
    directory leads out of the root (a symlink) is refused with ValueError.

    Puts made while the disk is busy are written together (group commit): one thread writes every waiting file,
    then syncs each, renames each, and syncs each directory once, and only then does any of those puts return.
    Syncing one file at a time from several threads cost the worker ~0.9 ms of system CPU per certificate on
    ext4, more than all its other work for it (docs/benchmarks.md). Puts run on one event loop at a time.
    """

    backend = "local"

    def __init__(self, root: Path, public_base_url: str) -> None:
        self.root = Path(root).resolve()
        self.public_base_url = public_base_url.rstrip("/")
        self._writes: _Writes | None = None
        # Temp names unique across the workers sharing a volume, without a uuid per file.
        self._tmp_prefix = uuid.uuid4().hex[:12]
        self._tmp_names = itertools.count()

    def path(self, key: str) -> Path:
        """File of ``key``; ValueError for a key that would leave the root."""
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"object key escapes the store root: {key!r}")
        return path

    def _stored(self, key: str, digest: str, size: int) -> StoredObject:
        return StoredObject(key, f"{self.public_base_url}/certificates/{key}", digest, size, self.backend)

    async def put(self, key: str, data: bytes, *, content_type: str = "application/pdf") -> StoredObject:
        # check_key's segments start with a letter or digit and hold no '..', so the joined path stays in the root;
        # only a symlink could lead out, and the disk thread resolves each directory before it writes there.
        path = self.root / check_key(key)
        data = bytes(data)
        loop = asyncio.get_running_loop()
        writes = self._writes
        if writes is None or writes.loop is not loop:
            writes = self._writes = _Writes(loop)
        write = _Write(key, path, data, loop.create_future())
        writes.queued.append(write)
        if writes.task is None or writes.task.done():
            writes.task = loop.create_task(self._write_queued(writes), name="local-certificate-store")
        return await write.done

    async def _write_queued(self, writes: _Writes) -> None:
        """Takes the waiting puts to the disk thread, a group at a time, until none wait."""
        group: list[_Write] = []
        try:
            while writes.queued:
                group, writes.queued = writes.queued[:GROUP_MAX], writes.queued[GROUP_MAX:]
                results = await asyncio.to_thread(self._write_group, group)
                for write, result in zip(group, results, strict=True):
                    if write.done.done():  # its caller was cancelled
                        continue
                    if isinstance(result, StoredObject):
                        write.done.set_result(result)
                    else:
                        write.done.set_exception(result)
                group = []
        except BaseException as exc:  # cancelled with the loop, or a bug: no put waits forever
            for write in group + writes.queued:
                if write.done.done():
                    continue
                if isinstance(exc, Exception):
                    write.done.set_exception(exc)
                else:
                    write.done.cancel()
            writes.queued = []
            raise

    def _write_group(self, group: list[_Write]) -> list[StoredObject | Exception]:
        """Runs in a thread: every file of ``group`` durable under its key, or the error that stopped it."""
        results: list[StoredObject | Exception | None] = [None] * len(group)
        digests = [hashlib.sha256(write.data).hexdigest() for write in group]
        staged = self._stage(group, digests, results)
        for i, fd, _ in staged:  # one after another in this thread: syncs from several threads at once cost more CPU
            try:
                if results[i] is None:
                    os.fsync(fd)
            except OSError as exc:
                results[i] = self._unavailable(exc)
            finally:
                os.close(fd)
        renamed: dict[Path, list[int]] = {}
        for i, _, tmp in staged:
            try:
                if results[i] is None:
                    os.replace(tmp, group[i].path)
                    renamed.setdefault(tmp.parent, []).append(i)
            except OSError as exc:
                results[i] = self._unavailable(exc)
            finally:
                if results[i] is not None:
                    tmp.unlink(missing_ok=True)
        for directory, indexes in renamed.items():
            try:
                self._sync_directory(directory)  # makes the renames themselves durable
                synced: Exception | None = None
            except OSError as exc:
                synced = self._unavailable(exc)
            for i in indexes:
                results[i] = synced or self._stored(group[i].key, digests[i], len(group[i].data))
        return [result for result in results if result is not None]

    def _stage(self, group: list[_Write], digests: list[str], results: list[StoredObject | Exception | None]) -> list[
            tuple[int, int, Path]]:
        """Each write's bytes in a new temp file beside its target, not yet synced: (index, fd, temp path). A
        write whose file already holds its bytes, or that fails here, gets its result instead."""
        staged: list[tuple[int, int, Path]] = []
        checked: set[Path] = set()
        for i, write in enumerate(group):
            parent = write.path.parent
            try:
                if parent not in checked:
                    if not parent.resolve().is_relative_to(self.root):
                        results[i] = ValueError(f"object key escapes the store root: {write.key!r}")
                        continue
                    parent.mkdir(parents=True, exist_ok=True)
                    checked.add(parent)
                if self._holds(write, digests[i]):
                    results[i] = self._stored(write.key, digests[i], len(write.data))
                    continue
                tmp = parent / f".{write.path.name}.{self._tmp_prefix}-{next(self._tmp_names)}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except OSError as exc:  # disk full, read-only volume, unmounted share: the store is unusable
                results[i] = self._unavailable(exc)
                continue
            staged.append((i, fd, tmp))
            try:
                os.fchmod(fd, 0o644)  # whatever the umask: the service serves these files
                view = memoryview(write.data)
                while view:
                    view = view[os.write(fd, view):]
                _start_writeback(fd)
            except OSError as exc:
                results[i] = self._unavailable(exc)
        return staged

    @staticmethod
    def _holds(write: _Write, digest: str) -> bool:
        """Whether the file already holds exactly these bytes (a batch served again after a crash)."""
        try:
            if write.path.stat().st_size != len(write.data):
                return False
        except FileNotFoundError:
            return False
        return hashlib.sha256(write.path.read_bytes()).hexdigest() == digest

    @staticmethod
    def _sync_directory(directory: Path) -> None:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _unavailable(self, exc: OSError) -> StorageUnavailable:
        return StorageUnavailable(f"local certificate store {self.root}: {exc}")

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
        probe = self.root / f".health-{self._tmp_prefix}-{next(self._tmp_names)}.tmp"
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
