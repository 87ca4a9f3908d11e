"""The recovery watch's decisions, read from Faust's own Recovery object as the worker's timer reads it."""

from __future__ import annotations

import faust
import pytest
from faust.types import TP

from config.settings import Settings
from streams.recovery_watch import Action, RecoveryWatch

STALL = 60.0
BATCH_PROGRESS = TP("t-batch-progress-changelog", 3)
JOB_PROGRESS = TP("t-job-progress-changelog", 2)
CALLBACKS = TP("t-callbacks-changelog", 2)


@pytest.fixture
def recovery():
    app = faust.App("recovery-watch-test", store="memory://", autodiscover=False)
    recovery = app.tables.recovery
    # What the stalled worker's log showed (CI, 2026-12-01): actives read from these offsets up to these ends.
    recovery.active_highwaters.update({BATCH_PROGRESS: 7, JOB_PROGRESS: 23, CALLBACKS: 23})
    recovery.active_offsets.update({BATCH_PROGRESS: 2, JOB_PROGRESS: 7, CALLBACKS: 6})
    recovery._set_recovery_started()  # Faust's own: in_recovery, start time
    return recovery


def test_partitions_that_move_are_left_alone(recovery):
    watch = RecoveryWatch(STALL)
    assert watch.decide(recovery, 0.0).action is Action.WAIT
    for t in range(1, 10):
        recovery.active_offsets[BATCH_PROGRESS] = 2 + t % 5 if t < 5 else 7  # moves, then catches up
        recovery.active_offsets[JOB_PROGRESS] += 1
        recovery.active_offsets[CALLBACKS] = min(23, recovery.active_offsets[CALLBACKS] + 2)
        assert watch.decide(recovery, t * 30.0).action is Action.WAIT


def test_a_partition_that_does_not_move_is_fetched_again_then_the_worker_gives_up(recovery):
    watch = RecoveryWatch(STALL)
    watch.decide(recovery, 0.0)
    recovery.active_offsets[CALLBACKS] = 23  # callbacks caught up; the other two never get an event
    assert watch.decide(recovery, STALL - 1).action is Action.WAIT
    decision = watch.decide(recovery, STALL)
    assert decision.action is Action.RESEEK
    assert decision.stalled == {BATCH_PROGRESS: 2, JOB_PROGRESS: 7}  # seek to what recovery last applied
    watch.reseeked(decision.stalled, STALL)
    assert watch.decide(recovery, 2 * STALL - 1).action is Action.WAIT  # a full period to show it worked
    decision = watch.decide(recovery, 2 * STALL)
    assert decision.action is Action.EXIT
    assert decision.stalled == {BATCH_PROGRESS: 2, JOB_PROGRESS: 7}


def test_a_partition_that_moves_after_being_fetched_again_is_mended_gently_next_time(recovery):
    watch = RecoveryWatch(STALL)
    watch.decide(recovery, 0.0)
    decision = watch.decide(recovery, STALL)
    assert decision.action is Action.RESEEK
    watch.reseeked(decision.stalled, STALL)
    recovery.active_offsets[BATCH_PROGRESS] = 5  # the fetch worked
    recovery.active_offsets[JOB_PROGRESS] = 23
    recovery.active_offsets[CALLBACKS] = 23
    assert watch.decide(recovery, STALL + 5).action is Action.WAIT
    decision = watch.decide(recovery, 2 * STALL + 5)  # stuck again, at 5: a new stall, fetched again first
    assert (decision.action, decision.stalled) == (Action.RESEEK, {BATCH_PROGRESS: 5})


def test_a_silent_broker_is_not_a_stall(recovery):
    watch = RecoveryWatch(STALL)
    watch.decide(recovery, 0.0)
    assert watch.decide(recovery, STALL).action is Action.RESEEK
    watch.broker_silent(STALL)  # the worker asked the broker for the ends and got no answer
    assert watch.decide(recovery, 2 * STALL - 1).action is Action.WAIT
    assert watch.decide(recovery, 2 * STALL).action is Action.RESEEK  # not EXIT: nothing was fetched again


def test_a_new_recovery_starts_the_clocks_again(recovery):
    watch = RecoveryWatch(STALL)
    watch.decide(recovery, 0.0)
    decision = watch.decide(recovery, STALL)
    watch.reseeked(decision.stalled, STALL)
    recovery._recovery_started_at += 1.0  # a rebalance during recovery: Faust starts it over
    assert watch.decide(recovery, 2 * STALL).action is Action.WAIT
    assert watch.decide(recovery, 3 * STALL).action is Action.RESEEK


def test_nothing_is_judged_outside_recovery(recovery):
    watch = RecoveryWatch(STALL)
    watch.decide(recovery, 0.0)
    recovery._set_recovery_ended()
    assert watch.decide(recovery, 10 * STALL).action is Action.WAIT
    recovery._set_recovery_started()
    assert watch.decide(recovery, 11 * STALL).action is Action.WAIT  # first sight of this recovery


def test_the_watch_is_on_by_default_and_can_be_turned_off():
    assert Settings().recovery_stall_seconds == 60.0
    assert Settings(recovery_stall_seconds=0).recovery_stall_seconds == 0
    with pytest.raises(ValueError):
        RecoveryWatch(0)
