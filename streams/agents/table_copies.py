"""What the agents that copy a topic into a table every worker reads share (apply-settings, apply-templates,
apply-suppressions): one record at a time, in log order; a record that is not one of the topic's own events is
dead-lettered with the reason, and the agent goes on with the next one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust

from schemas.envelope import UndecodableRecord, decode
from schemas.events import Event
from streams.context import StreamContext


def register_table_copy(app: faust.App, ctx: StreamContext, topic: faust.TopicT, *, name: str, what: str,
                        kinds: tuple[type[Event], ...],
                        apply: Callable[[Any, faust.types.Message], Awaitable[None]],
                        default: type[Event] | None = None) -> None:
    """Run ``apply`` on each event of one of ``kinds`` on ``topic`` (named ``what`` in a dead letter's reason);
    ``default`` decodes a record without CloudEvents headers as that type. ``apply`` takes one of ``kinds``
    (typed Any here: mypy cannot tie a tuple of classes to the union of them)."""

    async def apply_one(message: faust.types.Message) -> None:
        try:
            event = decode(message.value, message.headers, default=default)
            if not isinstance(event, kinds):
                raise UndecodableRecord(f"unexpected {type(event).__name__} on the {what} topic")
        except UndecodableRecord as exc:
            await ctx.dead_letter(message, str(exc), name)
            return
        await apply(event, message)

    # concurrency=1: with more, faust-streaming can commit past an in-flight message (#606); one at a time also
    # keeps the table in log order.
    @app.agent(topic, name=name, concurrency=1)
    async def copy_into_table(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await ctx.guarded(event.message, name, apply_one)
