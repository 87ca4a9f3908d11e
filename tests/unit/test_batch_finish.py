"""A batch whose outcomes could not all be put in the log is served again, never reported done."""

from __future__ import annotations

import asyncio

import pytest

from streams.agents.batches import Finish


class Refused(Exception):
    pass


def test_a_flush_that_fails_fails_the_batch_and_does_not_complete_it():
    completed: list[bool] = []

    async def flush() -> None:
        raise Refused("the broker refused an outcome")

    async def complete(fell_back: bool) -> None:
        completed.append(fell_back)

    async def run() -> Finish:
        sends = asyncio.get_running_loop().create_future()
        sends.set_result(False)  # every message went out
        finish = Finish(sends, flush, complete)
        with pytest.raises(Refused):
            await finish()
        return finish

    finish = asyncio.run(run())
    assert finish.failed  # served again from the ledger
    assert not finish.durable.is_set()
    assert completed == []


def test_a_flush_that_succeeds_completes_the_batch():
    completed: list[bool] = []

    async def flush() -> None:
        return None

    async def complete(fell_back: bool) -> None:
        completed.append(fell_back)

    async def run() -> Finish:
        sends = asyncio.get_running_loop().create_future()
        sends.set_result(True)
        finish = Finish(sends, flush, complete)
        await finish()
        return finish

    finish = asyncio.run(run())
    assert not finish.failed and finish.durable.is_set()
    assert completed == [True]
