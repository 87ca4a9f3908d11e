"""A cloud certificate store that failed a put is skipped until a background check passes (``StoreWatch``)."""

from __future__ import annotations

import asyncio
import random

from adapters.storage.base import StorageUnavailable, StoredObject
from adapters.storage.watch import StoreWatch


class Bucket:
    """A store whose check fails ``down`` times, then passes; and the back-off slept before each check."""

    backend = "s3"

    def __init__(self, down: int) -> None:
        self.down = down
        self.checks = 0
        self.slept: list[float] = []

    async def put(self, key: str, data: bytes, *, content_type: str = "application/pdf") -> StoredObject:
        raise AssertionError("a watch never puts")

    async def get(self, key: str) -> bytes:
        raise AssertionError("a watch never reads")

    async def exists(self, key: str) -> bool:
        raise AssertionError("a watch never reads")

    async def check(self) -> None:
        self.checks += 1
        if self.checks <= self.down:
            raise StorageUnavailable(f"s3 bucket certs: Connect timeout (check {self.checks})")

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        await asyncio.sleep(0)


def watch_of(bucket: Bucket) -> StoreWatch:
    return StoreWatch(bucket, cap=30.0, rng=random.Random(3), sleep=bucket.sleep)


async def settled() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_a_failed_put_skips_the_store_until_a_background_check_passes() -> None:
    bucket = Bucket(down=3)
    watch = watch_of(bucket)
    assert watch.skipped() is None
    watch.failed("s3 bucket certs: Connect timeout on endpoint URL")
    watch.failed("s3 bucket certs: Connect timeout on endpoint URL")  # another put of the same outage: one task
    skipped = watch.skipped()
    assert skipped is not None and skipped.startswith("s3 bucket certs: Connect timeout on endpoint URL (skipped: ")
    await settled()
    assert watch.skipped() is None  # the fourth check passed
    assert bucket.checks == 4 and len(bucket.slept) == 4
    # Equal jitter: at least half of each ceiling (1, 2, 4, 8 s), never more than it, capped at the cool-down.
    assert all(ceiling / 2 <= slept <= ceiling for slept, ceiling in zip(bucket.slept, [1, 2, 4, 8], strict=True))


async def test_a_put_taken_meanwhile_brings_it_back_and_ends_the_checks() -> None:
    bucket = Bucket(down=1000)
    watch = watch_of(bucket)
    watch.failed("s3 bucket certs: HTTP 503")
    await asyncio.sleep(0)
    watch.took()
    assert watch.skipped() is None
    await settled()
    assert bucket.checks <= 1 and watch.skipped() is None  # a failed check after the put does not undo it


async def test_close_stops_the_checks() -> None:
    release = asyncio.Event()

    async def held(_delay: float) -> None:
        await release.wait()

    bucket = Bucket(down=1000)
    watch = StoreWatch(bucket, cap=30.0, sleep=held)
    watch.failed("s3 bucket certs: HTTP 503")
    await asyncio.sleep(0)
    watch.close()
    release.set()
    await settled()
    assert bucket.checks == 0 and watch.skipped() is not None
