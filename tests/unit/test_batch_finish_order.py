"""The order in which served batches become durable and are acked (streams.agents.batches).

Batches become durable in record order (the gate of the batch after next counts on it) and are acked in record
order (commits never pass an unfinished batch), but a batch's durability does not wait for the BatchCompleted of
the batch before it to be acknowledged: that wait held every batch's durability, and with it the first send of
the batch after next, ~25 ms a batch in a 50,000-learner job."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from streams.agents.batches import Finish, _finish_and_ack


class Ctx:
    async def guarded(self, message: Any, stage: str, handle: Any) -> Any:
        return await handle(message)


class Stream:
    def __init__(self) -> None:
        self.acked: list[str] = []

    async def ack(self, event: Any) -> None:
        self.acked.append(event.message)


class Recorder:
    stalled_by = None

    async def flush(self) -> None:
        await asyncio.sleep(0)


class Batch:
    """A served batch whose sends end, and whose BatchCompleted is acknowledged, when the test says so."""

    def __init__(self, key: str) -> None:
        loop = asyncio.get_running_loop()
        self.sends: asyncio.Future[bool] = loop.create_future()
        self.completed = asyncio.Event()  # its BatchCompleted is acknowledged
        self.finish = Finish(key, self.sends, Recorder(), self._complete)  # type: ignore[arg-type]
        self.event = SimpleNamespace(message=key)

    async def _complete(self, fell_back: bool) -> None:
        await self.completed.wait()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def serve_both(stream: Stream) -> tuple[Batch, Batch, asyncio.Task[bool], asyncio.Task[bool]]:
    first, second = Batch("k"), Batch("k+1")
    ctx, held = Ctx(), SimpleNamespace(let_go=lambda message, stream: None)
    finishing = asyncio.create_task(_finish_and_ack(ctx, None, stream, held, first.event,  # type: ignore[arg-type]
                                                    first.finish, after=None, after_durable=None))
    following = asyncio.create_task(_finish_and_ack(ctx, None, stream, held, second.event,  # type: ignore[arg-type]
                                                    second.finish, after=finishing,
                                                    after_durable=first.finish.durable))
    return first, second, finishing, following


async def test_a_batch_is_durable_before_the_batch_before_it_has_completed() -> None:
    stream = Stream()
    first, second, finishing, following = await serve_both(stream)
    first.sends.set_result(False)
    second.sends.set_result(False)
    await settle()
    assert first.finish.durable.is_set() and second.finish.durable.is_set()  # BatchCompleted of k still out
    assert stream.acked == []  # neither is acked before its own BatchCompleted is in the log

    second.completed.set()
    await settle()
    assert stream.acked == []  # k+1 is not acked before k
    first.completed.set()
    assert await asyncio.wait_for(finishing, 5) and await asyncio.wait_for(following, 5)
    assert stream.acked == ["k", "k+1"]


async def test_batches_become_durable_in_record_order() -> None:
    stream = Stream()
    first, second, finishing, following = await serve_both(stream)
    second.sends.set_result(False)  # k+1's sends ended first (a retry held one of k's learners)
    await settle()
    assert not second.finish.durable.is_set()  # k still has sends out, so k+1 is not counted durable

    first.sends.set_result(False)
    await settle()
    assert first.finish.durable.is_set() and second.finish.durable.is_set()
    first.completed.set()
    second.completed.set()
    await asyncio.wait_for(asyncio.gather(finishing, following), 5)
    assert stream.acked == ["k", "k+1"]
