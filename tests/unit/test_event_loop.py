"""OFFLOAD_EVENT_LOOP (offload/loop.py): the loop a process makes after the choice is the one chosen."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop

from config.settings import EventLoop, Settings
from offload.loop import use_event_loop


@pytest.fixture(autouse=True)
def policy_restored() -> Iterator[None]:
    saved = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(saved)


def test_uvloop_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OFFLOAD_EVENT_LOOP", raising=False)
    assert Settings().event_loop == "uvloop"


@pytest.mark.parametrize(("choice", "kind"), [("uvloop", uvloop.Loop), ("asyncio", asyncio.SelectorEventLoop)])
def test_every_loop_made_after_the_choice_is_of_its_kind(choice: EventLoop, kind: type) -> None:
    use_event_loop(choice)

    async def running() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    assert isinstance(asyncio.run(running()), kind)  # as the worker's topic set-up and the projector run it
    loop = asyncio.new_event_loop()  # as Faust's consumer thread and aiohttp's run_app make theirs
    try:
        assert isinstance(loop, kind)
    finally:
        loop.close()


def test_an_unknown_choice_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        Settings()
