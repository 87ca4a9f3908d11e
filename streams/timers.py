"""Periodic work over the worker's tables: a Faust timer that skips its tick while tables recover and logs a
failed tick instead of dying (the next tick tries again)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import faust

from streams.context import StreamContext

log = logging.getLogger(__name__)


def table_timer(app: faust.App, ctx: StreamContext, *, name: str, interval: float, failure: str,
                tick: Callable[[], Awaitable[None]]) -> None:
    """Run ``tick`` every ``interval`` seconds once the tables are whole; ``failure`` says what failed in the log."""

    @app.timer(interval=interval, name=name)
    async def run_tick() -> None:
        if app.rebalancing or app.in_recovery:
            return  # the tables may be half-recovered; the next tick will do
        try:
            await ctx.ensure_started()
            await tick()
        except Exception:  # tried again at the next tick
            log.exception("%s failed", failure)
