"""Who a retry serves: the learners whose last run failed them, across any number of runs."""

from __future__ import annotations

from streams.state import Failure, JobProgress, choose

FAILURES = {
    (0, 0): [[1, True], [2, False]],
    (0, 3): [[40, True]],
    (1, 0): [[1, True]],  # run 1 served 1 and 40 again: 1 failed again, 40 was sent
}


def lookup(run: int, batch: int) -> list:
    return FAILURES[(run, batch)]


def state(runs: dict, done: dict, included: dict | None = None, completed: list | None = None) -> JobProgress:
    """Job progress as the changelog stores it, read back through the type."""
    return JobProgress.from_dict({"runs": runs, "done": done, "included": included or {},
                                  "completed_runs": completed or []})


def test_first_run_failures_are_the_candidates():
    s = state({"0": 4}, {"0": {"0": [8, 2], "1": [10, 0], "2": [10, 0], "3": [9, 1]}})
    assert s.current_failures(lookup) == {1: Failure(True, 0, 0), 2: Failure(False, 0, 0), 40: Failure(True, 0, 3)}


def test_a_later_run_decides_for_the_learners_it_served():
    s = state({"0": 4, "1": 1}, {"0": {"0": [8, 2], "3": [9, 1]}, "1": {"0": [1, 1]}}, included={"1": [1, 40]})
    failed = s.current_failures(lookup)
    assert failed == {1: Failure(True, 1, 0), 2: Failure(False, 0, 0)}
    assert choose(failed, only_retryable=True) == {1: Failure(True, 1, 0)}
    assert set(choose(failed, only_retryable=False)) == {1, 2}


def test_retry_waits_until_every_run_has_completed():
    assert not state({"0": 2, "1": 1}, {}, completed=[0]).all_runs_completed()
    assert state({"0": 2, "1": 1}, {}, completed=[0, 1]).all_runs_completed()
    assert not state({}, {}).all_runs_completed()
