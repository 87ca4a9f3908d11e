"""Faust's consumer hands each record to its callback without four tasks per record, when nothing has to wait.

Faust's drain loop (``Consumer._drain_messages``) delivers every record with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: mode's ``wait_first`` wraps the callback,
the suspend wait and the service's stopped and crashed events in four tasks, waits for the first, and cancels the
other three: 40–50 µs of the worker's event loop per record on this machine (watch-delivery reads one
outcome record per learner). The callback (Faust's conductor: acquire the flow control, put the event on each
channel's queue) almost never waits: only for a full queue, a stopped flow or the producer's buffer.

:func:`wait_first` runs the first coroutine's first step at once. If it ends there, it has done exactly what the
callback task would have done in Faust's own: that task takes its first step before anything else can run, and a
callback that does not wait is delivered whether the suspend wait is set or not. If it waits, what is left of it
races the rest in mode's own ``wait_first``, as before, so a flow suspended while it waits still cancels it.
That first step runs in the drain loop's task, the rest in a task of its own: a callback that tied something to
its task before it first waits (``asyncio.timeout``, ``current_task()``) would find the wrong one. Faust's conductor
ties nothing; check it again when Faust is upgraded.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from mode.services import WaitArgT, WaitResults


class _Rest:
    """The rest of a coroutine that has taken its first step and yielded ``pending`` (what it waits for)."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                sent = yield pending  # the task running this waits for it, as it would have for the coroutine
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancel, thrown in by the task: the coroutine handles it
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _rest(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    return await _Rest(coro, pending)


def _close(coros: tuple[WaitArgT, ...]) -> None:
    for coro in coros:
        if inspect.iscoroutine(coro):
            coro.close()  # never started: closing it is all it needs


async def wait_first(mode_wait_first: Callable[..., Awaitable[WaitResults]], stopped: Callable[[], bool],
                     coros: tuple[WaitArgT, ...], timeout: float | None) -> WaitResults:
    """mode's ``Service.wait_first(*coros, timeout=timeout)``, with a first coroutine that ends in its first step
    taken as the winner at once (the others are closed unstarted); ``stopped``: the service stopped or crashed."""
    first = coros[0] if coros else None
    if not inspect.iscoroutine(first):
        return await mode_wait_first(*coros, timeout=timeout)
    try:
        pending = first.send(None)
    except StopIteration as done:
        _close(coros[1:])
        if stopped():  # as mode's: a stopped service reports no winner
            return WaitResults([], [], True)
        return WaitResults([first], [done.value], False)
    except BaseException:
        _close(coros[1:])
        raise
    return await mode_wait_first(_rest(first, pending), *coros[1:], timeout=timeout)
