"""adapters.email.leases: a freed session goes to the task that asked first, never to a newcomer."""

from __future__ import annotations

import asyncio

from adapters.email.leases import FairLeases


def test_a_freed_lease_goes_to_the_longest_waiter_not_to_a_newcomer() -> None:
    async def scenario() -> tuple[int, int]:
        leases = FairLeases(1)
        held = await leases.take()
        waiter = asyncio.create_task(leases.take())
        await asyncio.sleep(0)  # waiting now
        # The newcomer's first step is queued before the waiter is woken: asyncio.Queue let it take the index.
        newcomer = asyncio.create_task(leases.take())
        leases.give(held)
        await asyncio.wait([waiter, newcomer], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert waiter.done() and not newcomer.done(), "the newcomer took the lease ahead of the waiter"
        leases.give(await waiter)
        return await waiter, await newcomer

    assert asyncio.run(scenario()) == (0, 0)


def test_leases_are_served_in_the_order_asked() -> None:
    async def scenario() -> list[str]:
        leases = FairLeases(2)
        first, second = await leases.take(), await leases.take()
        order: list[str] = []

        async def ask(name: str) -> None:
            index = await leases.take()
            order.append(name)
            await asyncio.sleep(0)
            leases.give(index)

        tasks = [asyncio.create_task(ask(name)) for name in "abcdef"]
        await asyncio.sleep(0)
        leases.give(first)
        leases.give(second)
        await asyncio.gather(*tasks)
        assert leases.waiting() == 0
        assert sorted([await leases.take(), await leases.take()]) == [0, 1]  # both free again
        return order

    assert asyncio.run(scenario()) == list("abcdef")


def test_a_waiter_cancelled_as_it_is_handed_a_lease_passes_it_on() -> None:
    async def scenario() -> tuple[int, int]:
        leases = FairLeases(1)
        held = await leases.take()
        cancelled = asyncio.create_task(leases.take())
        behind = asyncio.create_task(leases.take())
        await asyncio.sleep(0)
        leases.give(held)  # handed to ``cancelled``, which has not run since
        cancelled.cancel()
        got = await behind
        leases.give(got)
        return got, await leases.take()

    assert asyncio.run(scenario()) == (0, 0)


def test_a_waiter_cancelled_while_waiting_takes_nothing() -> None:
    async def scenario() -> tuple[int, bool]:
        leases = FairLeases(1)
        held = await leases.take()
        gone = asyncio.create_task(leases.take())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert leases.waiting() == 0
        leases.give(held)
        return await leases.take(), gone.cancelled()

    assert asyncio.run(scenario()) == (0, True)
