"""A worker's share of every account's rate is the fraction of the batch partitions it owns, counted again when a
rebalance gives it a new consumer generation, not from the whole assignment before every provider call."""

from __future__ import annotations

from typing import cast

import faust
import pytest
from faust.assignor.client_assignment import ClientAssignment
from faust.assignor.partition_assignor import PartitionAssignor
from faust.types import TP

from config.settings import Settings
from streams.agents.batches import share_of_batches
from streams.context import StreamContext


def _assign(app: faust.App, actives: dict[str, list[int]], generation: int) -> None:
    """What a rebalance leaves behind: the assignor's new assignment, then the consumer's new generation."""
    cast(PartitionAssignor, app.assignor)._assignment = ClientAssignment(actives=actives, standbys={})
    app.consumer_generation_id = generation


def test_the_share_follows_the_batch_partitions_owned_and_is_counted_once_per_generation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(environment="test", batch_partitions=12)
    app = faust.App("batch-share-test", broker="kafka://127.0.0.1:9", autodiscover=False)
    ctx = StreamContext.build(app, settings)
    batches = ctx.batches.get_topic_name()
    share = share_of_batches(app, ctx)

    assert share() == 1 / 12  # nothing assigned yet: one partition's worth, never zero
    _assign(app, {batches: list(range(12)), "outcomes": list(range(6))}, generation=1)
    assert share() == 1.0
    counted = []
    listing = app.assignor.assigned_actives

    def counting() -> set[TP]:
        counted.append(app.consumer_generation_id)
        return listing()
    monkeypatch.setattr(app.assignor, "assigned_actives", counting)
    assert [share() for _ in range(50)] == [1.0] * 50 and counted == []  # same generation: not counted again
    _assign(app, {batches: [0, 2, 4, 6, 8, 10], "outcomes": [0, 1, 2]}, generation=2)  # a second worker joined
    assert share() == 6 / 12
    _assign(app, {batches: list(range(20))}, generation=3)  # more partitions than the settings say: capped
    assert [share() for _ in range(5)] == [1.0] * 5
    assert counted == [2, 3]  # once per generation
