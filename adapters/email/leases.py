"""Session leases handed out strictly in the order they were asked for.

``asyncio.Queue`` is not strictly first come, first served: an index put back wakes the longest waiter, but a
task that asks before that waiter runs takes the index, and the waiter goes to the back of the line. In the
SMTP pool that let a later batch's chunk take a session ahead of an earlier batch's last chunk (the earlier
batch then finished behind the later one, which the pipelined batches' order depends on: streams.agents.batches).
Here a freed session goes straight to the longest waiter; a newcomer waits behind it.
"""

from __future__ import annotations

import asyncio
from collections import deque


class FairLeases:
    """``count`` leases (indexes 0..count-1), first come, first served."""

    def __init__(self, count: int) -> None:
        self._free: deque[int] = deque(range(count))  # non-empty only while nobody waits
        self._waiting: deque[asyncio.Future[int]] = deque()

    async def take(self) -> int:
        """A free index, or the next one given back after everyone who asked earlier has had theirs."""
        if self._free:
            return self._free.popleft()
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed over just as this task was cancelled
                self.give(waiter.result())
            raise  # a cancelled waiter left in the line is skipped by give()

    def give(self, index: int) -> None:
        """``index`` back: to the longest waiter, else to the free ones."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(index)
                return
        self._free.append(index)

    def waiting(self) -> int:
        """How many tasks wait for a lease."""
        return sum(1 for waiter in self._waiting if not waiter.done())
