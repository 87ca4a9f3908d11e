"""A batch's note (where its outcomes will start in the log) is durable once the broker has acknowledged its own
changelog record: the batch's intake waits for nothing else the table producer holds (the other tables' writes,
the marks of batches that completed), and a record the broker refused fails the intake instead of passing as
written."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from config.settings import Settings
from streams.context import BatchProgressTable, StreamContext


class Changelog:
    """Stands in for the changelog topic's send (set on the class, so called without the table): a future per
    record, acknowledged by the test."""

    def __init__(self) -> None:
        self.sent: dict[str, asyncio.Future[None]] = {}

    def send_changelog(self, partition: int | None, key: Any, value: Any, *_: Any) -> Any:
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acked.message = faust.types.PendingMessage(  # type: ignore[attr-defined]  # Table.on_key_set reads it
            channel=None, key=key, value=value, partition=partition, timestamp=None, headers=None,
            key_serializer=None, value_serializer=None, callback=None)
        self.sent[key] = acked
        return acked


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> tuple[BatchProgressTable, Changelog]:
    changelog = Changelog()
    monkeypatch.setattr(faust.Table, "send_changelog", changelog.send_changelog)
    app = faust.App("batch-progress-note-test", broker="kafka://127.0.0.1:9", autodiscover=False)
    ctx = StreamContext.build(app, Settings(environment="test"))
    return ctx.batch_progress, changelog


async def test_the_note_waits_for_its_own_record_only(table: tuple[BatchProgressTable, Changelog]) -> None:
    progress, changelog = table
    progress["job:0:0"] = {"stage": "done"}  # an earlier batch's mark, not yet acknowledged

    noting = asyncio.create_task(progress.set_durably("job:0:1", {"stage": "started"}))
    await asyncio.sleep(0.01)
    assert not noting.done()  # its record is not in the log yet
    assert progress["job:0:1"] == {"stage": "started"}
    changelog.sent["job:0:1"].set_result(None)
    await asyncio.wait_for(noting, 5)  # durable, while the earlier mark still waits
    assert not changelog.sent["job:0:0"].done()


async def test_a_note_the_broker_refused_fails_the_intake(table: tuple[BatchProgressTable, Changelog]) -> None:
    progress, changelog = table
    noting = asyncio.create_task(progress.set_durably("job:0:2", {"stage": "started"}))
    await asyncio.sleep(0.01)
    changelog.sent["job:0:2"].set_exception(RuntimeError("NotEnoughReplicas"))
    with pytest.raises(RuntimeError, match="NotEnoughReplicas"):
        await asyncio.wait_for(noting, 5)
