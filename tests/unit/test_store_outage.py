"""A certificate batch's learners waiting for the last store they can use (``StoreOutage``): one probe for all of
them, back-off counted against ``max_seconds``, the outage ended by the first put taken, and a batch that may be
given up only while every learner left waits (``_Waits``)."""

from __future__ import annotations

import asyncio
import random

import pytest

from adapters.email.delivery import BatchDelivery, RetryPolicy
from adapters.storage.base import StorageUnavailable
from streams.handlers.certificate_batches import _Waits
from streams.handlers.store_outage import StoreOutage
from tests.support.email import outgoing
from tests.unit.test_delivery_waits import RelayBackAfter

FULL = "local certificate store /srv/certs: [Errno 28] No space left on device"


class Disk:
    """A store's check: unavailable for the first ``down`` checks, then fine; and the back-off slept."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.checks = 0
        self.slept: list[float] = []

    async def check(self) -> None:
        self.checks += 1
        if self.checks <= self.down:
            raise StorageUnavailable(f"{FULL} (check {self.checks})")

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        await asyncio.sleep(0)


def outage(disk: Disk, max_seconds: float = 3600.0) -> StoreOutage:
    return StoreOutage("job j batch 0", disk.check, max_seconds=max_seconds, base_delay=0.5, max_delay=30.0,
                       rng=random.Random(7), sleep=disk.sleep)


async def test_no_outage_no_wait() -> None:
    disk = Disk(down=0)
    store = outage(disk)
    assert await store.until_up() is None
    assert (disk.checks, disk.slept, store.waiting) == (0, [], 0)


async def test_learners_wait_for_one_probe_and_put_again_once_a_check_passes() -> None:
    disk = Disk(down=2)
    store = outage(disk)
    store.lost(FULL)
    waiters = [asyncio.ensure_future(store.until_up()) for _ in range(5)]
    await asyncio.sleep(0)
    assert store.waiting == 5
    assert await asyncio.gather(*waiters) == [None] * 5
    assert disk.checks == 3  # one probe for the five: two failed checks, then one that passed
    assert len(disk.slept) == 3 and store.waited == pytest.approx(sum(disk.slept))
    assert store.waiting == 0 and not store.down
    assert store.reason == f"{FULL} (check 2)"  # what the last failed check said, until a put is taken
    assert await store.until_up() is None and disk.checks == 3  # the check passed: no new wait before the puts
    store.took()
    assert (store.reason, store.waited) == (None, 0.0)


async def test_a_put_that_fails_after_a_passed_check_waits_again_and_the_back_off_goes_on_growing() -> None:
    disk = Disk(down=0)
    store = outage(disk)
    store.lost(FULL)
    await store.until_up()
    store.lost(FULL)  # a nearly full disk: the check's one byte fits, a certificate does not
    await store.until_up()
    assert disk.checks == 2 and store.waited == pytest.approx(sum(disk.slept))
    ceilings = [min(30.0, 0.5 * 2 ** n) for n in range(2)]
    assert all(slept <= ceiling for slept, ceiling in zip(disk.slept, ceilings, strict=True))


async def test_an_outage_that_outlasts_max_seconds_fails_the_learners_left_and_the_batch_stops_waiting() -> None:
    disk = Disk(down=10_000)
    store = outage(disk, max_seconds=20.0)
    store.lost(FULL)
    why = await store.until_up()
    assert why is not None and why.startswith(FULL) and why.endswith(f"(waited {store.waited:.0f} s)")
    assert store.waited <= 20.0 and disk.checks == len(disk.slept)
    checks = disk.checks
    store.lost(FULL)
    assert await store.until_up() == why and disk.checks == checks  # no more waiting in this batch


async def test_max_seconds_zero_fails_at_once_as_before() -> None:
    disk = Disk(down=1)
    store = outage(disk, max_seconds=0.0)
    store.lost(FULL)
    assert await store.until_up() == f"{FULL} (waited 0 s)"
    assert (disk.checks, disk.slept) == (0, [])


async def test_a_cancelled_waiter_leaves_the_probe_to_the_others_and_close_stops_it() -> None:
    release = asyncio.Event()

    async def slow_sleep(_delay: float) -> None:
        await release.wait()

    disk = Disk(down=0)
    store = StoreOutage("job j batch 0", disk.check, max_seconds=60, base_delay=0.5, max_delay=30.0,
                        sleep=slow_sleep)
    store.lost(FULL)
    first, second = asyncio.ensure_future(store.until_up()), asyncio.ensure_future(store.until_up())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    assert store.waiting == 1 and not second.done()
    release.set()
    assert await second is None
    store.lost(FULL)
    third = asyncio.ensure_future(store.until_up())
    release.clear()
    await asyncio.sleep(0)
    store.close()
    with pytest.raises(asyncio.CancelledError):
        await third
    assert store.waiting == 0


async def test_a_batch_may_be_given_up_only_while_every_learner_left_waits_for_the_store_or_the_relay() -> None:
    release = asyncio.Event()

    async def held(_delay: float) -> None:
        await release.wait()

    disk = Disk(down=0)
    store = StoreOutage("job j batch 0", disk.check, max_seconds=60, base_delay=0.5, max_delay=30.0, sleep=held)
    waits = _Waits(3, None, store)
    store.lost(FULL)
    waiting = [asyncio.ensure_future(store.until_up()) for _ in range(2)]
    await asyncio.sleep(0)
    assert waits() is None  # the third learner still renders or puts
    mail = BatchDelivery([outgoing(0)], primary=RelayBackAfter(down=0), fallback=None, policy=RetryPolicy())
    waits.mails.add(mail)
    assert waits() is None  # its mail is in a round that may send
    mail.waits_for = "smtp unavailable: connection refused"
    assert waits() == f"certificate store unavailable: {FULL}"
    release.set()
    await asyncio.gather(*waiting)
    assert waits() is None  # the two put again
