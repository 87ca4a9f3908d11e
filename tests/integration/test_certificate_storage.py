"""Certificate stores against real back ends: moto's S3 HTTP server and real files on disk."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest

from adapters.storage.base import CertificateStore, ObjectNotFound, StorageUnavailable, object_key
from adapters.storage.local import LocalCertificateStore
from adapters.storage.s3 import S3CertificateStore
from tests.support.certificates import builtin_template, render_inputs, renderer
from tests.support.moto_server import MotoServer, free_port, moto_server

pytestmark = pytest.mark.integration
CREDS = {"access_key_id": "testing", "secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def certificate_pdf() -> bytes:
    return renderer().render(builtin_template(), **render_inputs())


@pytest.fixture
async def s3_store(moto: MotoServer) -> AsyncIterator[S3CertificateStore]:
    store = S3CertificateStore(bucket=f"certs-{uuid.uuid4().hex[:12]}", region="eu-west-1",
                               endpoint_url=moto.endpoint_url, presign_seconds=3600, **CREDS)
    await store.ensure_bucket()
    await store.ensure_bucket()  # twice: idempotent
    yield store
    store.close()


@pytest.fixture
def local_store(tmp_path: Path) -> LocalCertificateStore:
    return LocalCertificateStore(tmp_path / "certificates", "https://offload.example.org/")


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest) -> CertificateStore:
    return request.getfixturevalue(f"{request.param}_store")


def _key() -> str:
    return object_key(7, uuid.uuid4().hex, 12345, "ABCD-EFGH-JKMN-PQRS")


# --- the contract, run against every store ----------------------------------------------------------


async def test_put_get_exists_round_trip(store: CertificateStore, certificate_pdf: bytes) -> None:
    key = _key()
    assert isinstance(store, CertificateStore)
    assert not await store.exists(key)
    stored = await store.put(key, certificate_pdf)
    assert stored.key == key and stored.backend == store.backend
    assert stored.size == len(certificate_pdf)
    assert stored.sha256 == hashlib.sha256(certificate_pdf).hexdigest()
    assert await store.exists(key)
    assert await store.get(key) == certificate_pdf


async def test_a_store_that_takes_writes_passes_its_check(store: CertificateStore) -> None:
    await store.check()  # what health asks while the store is lost: it answers, so it is back
    if isinstance(store, LocalCertificateStore):
        assert list(store.root.iterdir()) == []  # the probe file is gone again


async def test_same_bytes_twice_is_harmless(store: CertificateStore, certificate_pdf: bytes) -> None:
    key = _key()
    first = await store.put(key, certificate_pdf)
    second = await store.put(key, certificate_pdf)
    assert (second.key, second.sha256, second.size) == (first.key, first.sha256, first.size)
    assert await store.get(key) == certificate_pdf


async def test_missing_key_and_unsafe_key(store: CertificateStore) -> None:
    with pytest.raises(ObjectNotFound):
        await store.get(_key())
    for bad in ["../escape.pdf", "/etc/passwd", "a//b.pdf", "a/../../b.pdf", "a\\b.pdf"]:
        with pytest.raises(ValueError):
            await store.put(bad, b"x")


async def test_concurrent_puts(store: CertificateStore) -> None:
    blobs = {_key(): os.urandom(2048) for _ in range(20)}
    stored = await asyncio.gather(*(store.put(k, v) for k, v in blobs.items()))
    assert {s.key for s in stored} == set(blobs)
    for key, blob in blobs.items():
        assert await store.get(key) == blob


# --- S3 specifics ----------------------------------------------------------------------------------


async def test_s3_object_has_type_checksum_and_a_working_presigned_url(
    s3_store: S3CertificateStore, moto: MotoServer, certificate_pdf: bytes
) -> None:
    key = _key()
    stored = await s3_store.put(key, certificate_pdf)
    client = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="eu-west-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    head = client.head_object(Bucket=s3_store.bucket, Key=key)
    assert head["ContentType"] == "application/pdf"
    assert head["Metadata"]["sha256"] == stored.sha256
    assert "X-Amz-Expires=3600" in stored.url and stored.url.startswith(moto.endpoint_url)
    with urllib.request.urlopen(stored.url, timeout=10) as resp:
        body = resp.read()
    assert body == certificate_pdf and hashlib.sha256(body).hexdigest() == stored.sha256


async def test_unreachable_endpoint_is_storage_unavailable() -> None:
    store = S3CertificateStore(bucket="certs", region="eu-west-1",
                               endpoint_url=f"http://127.0.0.1:{free_port()}", **CREDS)
    started = time.monotonic()
    try:
        calls = (store.put(_key(), b"%PDF"), store.get(_key()), store.exists(_key()), store.ensure_bucket(),
                 store.check())
        for call in calls:
            with pytest.raises(StorageUnavailable):
                await call
    finally:
        store.close()
    assert time.monotonic() - started < 30  # few retries: fall back to local quickly


async def test_missing_bucket_is_storage_unavailable(moto: MotoServer) -> None:
    store = S3CertificateStore(bucket=f"absent-{uuid.uuid4().hex[:8]}", region="eu-west-1",
                               endpoint_url=moto.endpoint_url, **CREDS)
    try:
        with pytest.raises(StorageUnavailable):
            await store.put(_key(), b"%PDF")
        with pytest.raises(StorageUnavailable):  # what health asks while the store is lost
            await store.check()
    finally:
        store.close()


# --- local specifics -------------------------------------------------------------------------------


async def test_local_url_and_atomic_replace(local_store: LocalCertificateStore) -> None:
    key = _key()
    first = await local_store.put(key, b"%PDF-old" * 1000)
    assert first.url == f"https://offload.example.org/certificates/{key}"
    path = local_store.path(key)
    with open(path, "rb") as reader:  # a reader holding the old file keeps reading the whole old file
        await local_store.put(key, b"%PDF-new" * 1000)
        assert reader.read() == b"%PDF-old" * 1000
    assert path.read_bytes() == b"%PDF-new" * 1000
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind


async def test_local_identical_put_does_not_rewrite(local_store: LocalCertificateStore) -> None:
    key = _key()
    first = await local_store.put(key, b"%PDF-same")
    before = local_store.path(key).stat()
    time.sleep(0.01)
    again = await local_store.put(key, b"%PDF-same")
    after = local_store.path(key).stat()
    assert again == first
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_local_symlink_out_of_root_is_refused(
    local_store: LocalCertificateStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    local_store.root.mkdir(parents=True, exist_ok=True)
    (local_store.root / "company-9").symlink_to(outside)
    with pytest.raises(ValueError):
        await local_store.put("company-9/x.pdf", b"%PDF")
    assert not any(outside.iterdir())


async def test_local_unwritable_root_is_storage_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(StorageUnavailable):
        await LocalCertificateStore(blocker, "http://x").put("a/b.pdf", b"%PDF")
    with pytest.raises(StorageUnavailable, match="local certificate store"):
        await LocalCertificateStore(blocker, "http://x").check()


async def test_local_full_disk_is_storage_unavailable_and_leaves_no_temp_files(small_disk) -> None:
    disk = small_disk("64k")
    store = LocalCertificateStore(disk / "certs", "http://x")
    data = os.urandom(36_000)
    results = await asyncio.gather(*(store.put(f"company-7/job/{i}.pdf", data) for i in range(3)),
                                   return_exceptions=True)
    assert sum(isinstance(r, StorageUnavailable) and "No space left on device" in str(r) for r in results) == 2
    assert len(list((disk / "certs").rglob("*.pdf"))) == 1  # the one that fitted, whole
    assert not list(disk.rglob("*.tmp"))
    await store.check()  # the check's one byte still fits: why a batch puts again after a passed check may wait again


async def test_local_puts_waiting_together_are_written_as_one_group(
    local_store: LocalCertificateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stat

    from adapters.storage import local

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    real_fadvise = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        synced.append("writeback started")
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(local.os, "fsync", fsync)
    monkeypatch.setattr(local.os, "posix_fadvise", fadvise)
    job = uuid.uuid4().hex
    blobs = {object_key(7, job, user, "ABCD-EFGH-JKMN-PQRS"): os.urandom(4096) for user in range(40)}
    stored = await asyncio.gather(*(local_store.put(k, v) for k, v in blobs.items()))
    assert [s.sha256 for s in stored] == [hashlib.sha256(v).hexdigest() for v in blobs.values()]
    for key, blob in blobs.items():
        assert local_store.path(key).read_bytes() == blob
    # Every file synced before any put returned; the 40 renames in one directory made durable by one sync.
    assert synced.count("file") == 40 and synced.count("directory") == 1
    # Every file on its way to the disk before the first sync waits for one.
    assert synced[:40] == ["writeback started"] * 40 and synced.count("writeback started") == 40
    assert not [p for p in local_store.path(next(iter(blobs))).parent.iterdir() if p.suffix == ".tmp"]


async def test_local_one_failed_put_in_a_group_fails_alone(local_store: LocalCertificateStore) -> None:
    job = uuid.uuid4().hex
    local_store.root.mkdir(parents=True, exist_ok=True)
    (local_store.root / "company-8").write_bytes(b"a file where a directory should be")
    good = [object_key(7, job, user, "ABCD-EFGH-JKMN-PQRS") for user in range(5)]
    bad = object_key(8, job, 1, "ABCD-EFGH-JKMN-PQRS")
    results = await asyncio.gather(*(local_store.put(k, b"%PDF-" + k.encode()) for k in [*good[:2], bad, *good[2:]]),
                                   return_exceptions=True)
    assert isinstance(results[2], StorageUnavailable) and "company-8" in str(results[2])
    assert [r.key for r in results if not isinstance(r, BaseException)] == good
    for key in good:
        assert await local_store.get(key) == b"%PDF-" + key.encode()


async def test_local_a_cancelled_put_leaves_the_others_written(local_store: LocalCertificateStore) -> None:
    job = uuid.uuid4().hex
    keys = [object_key(7, job, user, "ABCD-EFGH-JKMN-PQRS") for user in range(6)]
    puts = [asyncio.ensure_future(local_store.put(k, k.encode())) for k in keys]
    await asyncio.sleep(0)  # every put queued for the disk thread
    puts[1].cancel()
    done = await asyncio.gather(*puts, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [s.key for s in done if not isinstance(s, BaseException)] == keys[:1] + keys[2:]
    for key in keys:  # the cancelled one's file too: a put is harmless to repeat, and it was already on its way
        assert await local_store.get(key) == key.encode()
