"""A batch whose outcomes could not all be put in the log is served again, never reported done; a batch given up
while its sends wait for the quota ends with what it recorded flushed, not done."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from streams.agents.batches import Finish


class Refused(Exception):
    pass


def recorder(flush: Callable[[], Awaitable[None]], stalled_by: Callable[[], str | None] | None = None) -> Any:
    """What Finish uses of an OutcomeRecorder."""
    return SimpleNamespace(flush=flush, stalled_by=stalled_by)


def test_a_flush_that_fails_fails_the_batch_and_does_not_complete_it():
    completed: list[bool] = []

    async def flush() -> None:
        raise Refused("the broker refused an outcome")

    async def complete(fell_back: bool) -> None:
        completed.append(fell_back)

    async def run() -> Finish:
        sends = asyncio.get_running_loop().create_future()
        sends.set_result(False)  # every message went out
        finish = Finish("j:0:1", sends, recorder(flush), complete)
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
        finish = Finish("j:0:1", sends, recorder(flush), complete)
        await finish()
        return finish

    finish = asyncio.run(run())
    assert not finish.failed and finish.durable.is_set()
    assert completed == [True]


def test_a_batch_given_up_while_its_sends_wait_flushes_what_it_recorded_and_is_not_done():
    completed: list[bool] = []
    flushed: list[bool] = []
    paused: list[str] = []  # the quota's pause, while the sends wait for it

    async def flush() -> None:
        flushed.append(True)

    async def complete(fell_back: bool) -> None:
        completed.append(fell_back)

    async def run() -> tuple[Finish, bool, bool]:
        sends = asyncio.ensure_future(asyncio.Event().wait())  # waits for room in the quota, for ever here
        finish = Finish("j:0:1", sends, recorder(flush, lambda: paused[0] if paused else None), complete)
        finishing = asyncio.ensure_future(finish())
        await asyncio.sleep(0)
        assert finish.stalled() is None  # sending, not waiting: nothing to give up
        paused.append("SES 24-hour quota reached")
        assert finish.stalled() == "SES 24-hour quota reached"
        finish.give_up(finish.stalled() or "")
        done = await finishing
        return finish, done, sends.cancelled()

    finish, done, sends_stopped = asyncio.run(run())
    assert done is False and sends_stopped and finish.given_up == "SES 24-hour quota reached"
    assert flushed == [True] and completed == [] and not finish.failed
    assert finish.stalled() is None  # its sends have ended


def test_a_cancel_of_the_batch_itself_is_not_taken_for_a_give_up():
    async def flush() -> None:
        return None

    async def complete(fell_back: bool) -> None:
        raise AssertionError("a cancelled batch is not completed")

    async def run() -> None:
        sends = asyncio.ensure_future(asyncio.Event().wait())
        finish = Finish("j:0:1", sends, recorder(flush, lambda: "paused"), complete)
        finishing = asyncio.ensure_future(finish())
        await asyncio.sleep(0)
        finish.give_up("paused")
        finishing.cancel()  # the worker stops the agent meanwhile: the cancel goes on up
        with pytest.raises(asyncio.CancelledError):
            await finishing

    asyncio.run(run())
