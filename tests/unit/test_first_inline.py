"""The worker's consumer hands a record to Faust's callback without tasks when the callback does not wait, and
races it against the flow's suspension as Faust does when it waits (streams.first_inline)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from config.settings import Settings
from streams.app import create_app

T = TypeVar("T")


def _with_consumer(test: Callable[[Any], Awaitable[T]]) -> T:
    """``test`` run with the worker's own consumer (built, not started: no broker is asked)."""
    async def run() -> T:
        app = create_app(Settings(environment="test", certificate_code_secret_allow_default=True))
        return await test(app.consumer)
    return asyncio.run(run())


def _count_tasks() -> list[asyncio.Task[Any]]:
    made: list[asyncio.Task[Any]] = []
    loop = asyncio.get_running_loop()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    loop.set_task_factory(factory)
    return made


def test_a_callback_that_does_not_wait_is_delivered_without_a_task() -> None:
    async def test(consumer: Any) -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        suspend = asyncio.Event()

        async def callback(record: str) -> str:
            queue.put_nowait(record)
            return record

        made = _count_tasks()
        suspended = suspend.wait()
        result = await consumer.wait_first(callback("r1"), suspended)
        assert made == []
        assert suspended.cr_frame is None  # closed, never started: no "never awaited" warning
        assert result.done and result.results == ["r1"]
        assert not result.stopped
        assert queue.get_nowait() == "r1"

    _with_consumer(test)


def test_a_callback_that_waits_goes_on_in_a_task_and_is_delivered_when_it_can() -> None:
    async def test(consumer: Any) -> None:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        queue.put_nowait("r0")  # full: the callback waits, as Faust's does for a full stream buffer
        suspend = asyncio.Event()

        async def callback(record: str) -> str:
            await queue.put(record)
            return record

        async def drain_later() -> None:
            await asyncio.sleep(0.05)
            assert queue.get_nowait() == "r0"

        drained = asyncio.ensure_future(drain_later())
        result = await consumer.wait_first(callback("r1"), suspend.wait())
        await drained
        assert result.results[:1] == ["r1"] and not result.stopped
        assert queue.get_nowait() == "r1"

    _with_consumer(test)


def test_a_waiting_callback_is_cancelled_when_the_flow_is_suspended_first() -> None:
    async def test(consumer: Any) -> None:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        queue.put_nowait("r0")
        suspend = asyncio.Event()
        ended: list[str] = []

        async def callback(record: str) -> None:
            try:
                await queue.put(record)
            except asyncio.CancelledError:
                ended.append("cancelled")
                raise

        asyncio.get_running_loop().call_later(0.05, suspend.set)
        result = await consumer.wait_first(callback("r1"), suspend.wait())
        await asyncio.sleep(0)  # the cancel reaches the callback
        assert result.results == [True]  # the suspension won
        assert ended == ["cancelled"]
        assert queue.qsize() == 1 and queue.get_nowait() == "r0"

    _with_consumer(test)


def test_an_error_of_the_callback_is_raised_whether_it_waited_or_not() -> None:
    async def test(consumer: Any) -> None:
        async def at_once() -> None:
            raise ValueError("at once")

        async def after_a_wait() -> None:
            await asyncio.sleep(0.01)
            raise ValueError("after a wait")

        for callback, message in ((at_once, "at once"), (after_a_wait, "after a wait")):
            with pytest.raises(ValueError, match=message):
                await consumer.wait_first(callback(), asyncio.Event().wait())

    _with_consumer(test)


def test_a_stopped_consumer_reports_no_winner_as_modes_wait_first_does() -> None:
    async def test(consumer: Any) -> None:
        delivered: list[str] = []

        async def callback() -> None:
            delivered.append("r1")

        consumer._stopped.set()
        result = await consumer.wait_first(callback(), asyncio.Event().wait())
        assert result.stopped and result.done == []
        assert delivered == ["r1"]  # as in a task of its own: it had run before mode saw the stop

    _with_consumer(test)


def test_an_event_first_takes_modes_own_path() -> None:
    async def test(consumer: Any) -> None:
        event = asyncio.Event()
        event.set()
        result = await consumer.wait_first(event)
        assert result.done == [event] and not result.stopped

    _with_consumer(test)
