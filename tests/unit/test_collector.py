"""The collector settings of the long-running processes (resilience.collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from resilience.collector import YOUNG_GENERATION, collect_for_throughput, gc_paused


@pytest.fixture
def collector_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_the_worker_collects_young_objects_less_often_and_freezes_what_lives_as_long_as_it(
        collector_restored: None) -> None:
    default_middle, default_old = gc.get_threshold()[1:]
    assert collect_for_throughput() == (YOUNG_GENERATION, default_middle, default_old)
    assert gc.get_threshold() == (YOUNG_GENERATION, default_middle, default_old)
    assert gc.get_freeze_count() > 0  # what lived before: never scanned again
    assert gc.isenabled(), "cyclic garbage must still be found: the collector is not switched off"

    # Cyclic garbage made after start-up is still collected, without anyone asking: by young collections.
    young_runs = gc.get_stats()[0]["collections"]
    for _ in range(3 * YOUNG_GENERATION):
        cycle: list[object] = []
        cycle.append(cycle)
    assert gc.get_stats()[0]["collections"] > young_runs


def test_the_collector_is_paused_for_a_stretch_and_left_as_it_was() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("the stretch fails")
    assert gc.isenabled(), "an error in the stretch must not leave the collector off"
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "a caller that had it off keeps it off"
    finally:
        gc.enable()
