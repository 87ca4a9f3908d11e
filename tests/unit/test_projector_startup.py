"""A projector's start-up runs its Kafka and Postgres sides at once (projections/startup.py) and creates its read
models in one execute (projections/read_models.py). Whatever fails, nothing started is left running or open;
the one-string DDL holds every read model, and only a fresh (never the live) schema is dropped first."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time

import pytest

from config.settings import Settings
from projections import decoder, read_models, recipients, tracking
from projections.decoder import Decoder
from projections.projector import Projector
from projections.startup import both

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with pytest's threads about


class Resource:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


async def _opens(resource: Resource, delay: float = 0.0) -> Resource:
    await asyncio.sleep(delay)
    return resource


async def _fails(delay: float = 0.0) -> int:
    await asyncio.sleep(delay)
    raise RuntimeError("topic t does not exist")


async def test_both_gives_both_results() -> None:
    opened = Resource()
    first, second = await both(_opens(opened), asyncio.sleep(0.01, result=7), discard=Resource.close)
    assert (first, second, opened.closed) == (opened, 7, False)


async def test_when_the_second_fails_a_first_already_opened_is_discarded() -> None:
    opened = Resource()
    with pytest.raises(RuntimeError, match="does not exist"):
        await both(_opens(opened), _fails(0.01), discard=Resource.close)
    assert opened.closed


async def test_when_one_fails_the_other_is_cancelled_and_has_ended_before_the_error_goes_on() -> None:
    ended: list[str] = []

    async def slow() -> Resource:
        try:
            await asyncio.sleep(10)
        finally:
            ended.append("slow")
        return Resource()

    with pytest.raises(RuntimeError):
        await both(slow(), _fails(), discard=Resource.close)
    assert ended == ["slow"]
    with pytest.raises(RuntimeError):
        await both(_fails(), slow(), discard=Resource.close)  # type: ignore[arg-type]
    assert ended == ["slow", "slow"]


async def test_a_cancelled_start_up_cancels_both_and_discards_what_was_opened() -> None:
    opened = Resource()
    waiting = asyncio.Event()

    async def stuck() -> None:
        waiting.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(both(_opens(opened), stuck(), discard=Resource.close))
    await waiting.wait()
    await asyncio.sleep(0)  # the first has finished
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert opened.closed
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def test_the_one_string_ddl_creates_every_read_model_after_the_lock_and_drops_only_when_asked() -> None:
    text = read_models.read_models_ddl("replay_x").as_string(None)
    fresh = read_models.read_models_ddl("replay_x", drop_first=True).as_string(None)
    assert "DROP SCHEMA" not in text
    for ddl in (tracking.DDL, *(model.DDL for model in read_models.READ_MODELS), recipients.STAGING):
        assert ddl.strip().rstrip(";") in text
    order = [fresh.index(s) for s in ("pg_advisory_xact_lock(hashtext('replay_x'))", 'DROP SCHEMA IF EXISTS "replay_x"',
                                      'CREATE SCHEMA IF NOT EXISTS "replay_x"', 'SET search_path TO "replay_x"',
                                      "CREATE TABLE IF NOT EXISTS projection_offsets")]
    assert order == sorted(order)
    statements = [s.strip().upper() for s in fresh.split(";")]
    assert not [s for s in statements if s in ("BEGIN", "COMMIT") or s.startswith("SET LOCAL")]  # one implicit transaction


async def test_the_live_schema_is_never_dropped() -> None:
    settings = Settings(environment="test", database_url="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ValueError, match="live schema"):
        await read_models.open_read_models(settings, drop_first=True)  # refused before connecting
    with pytest.raises(ValueError, match="live schema"):
        Projector(settings, schema=settings.projection_schema, fresh=True)
    with pytest.raises(ValueError, match="live schema"):
        Projector(settings, fresh=True)


async def test_the_decoder_process_starts_while_the_caller_goes_on() -> None:
    forked = Decoder.forked(fresh=False)
    assert forked is not None
    try:
        assert await forked.started()
        built, others = await forked.build([])
        assert others == []
    finally:
        forked.close()
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]


def _dies_at_start(fresh: bool) -> None:
    os._exit(3)


async def test_a_decoder_process_that_dies_starting_is_closed_and_the_replay_decodes_itself(monkeypatch) -> None:
    monkeypatch.setattr(decoder, "_child_setup", _dies_at_start)  # the process is forked from this one
    forked = Decoder.forked(fresh=False)
    assert forked is not None
    assert not await forked.started()
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]


_child_setup = decoder._child_setup


def _starts_slowly(fresh: bool) -> None:
    time.sleep(0.3)
    _child_setup(fresh)


async def test_a_start_up_cancelled_while_the_decoder_starts_can_await_it_again(monkeypatch) -> None:
    monkeypatch.setattr(decoder, "_child_setup", _starts_slowly)
    forked = Decoder.forked(fresh=False)
    assert forked is not None
    try:
        waiting = asyncio.create_task(forked.started())
        await asyncio.sleep(0.05)
        waiting.cancel()  # the other side of the start-up failed
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await forked.started()  # the retry's start-up
    finally:
        forked.close()
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
