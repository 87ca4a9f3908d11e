"""The worker's table values: typed, read back from what older workers wrote, and strict about field names."""

from __future__ import annotations

import json

import pytest

from streams.state import BatchFailures, BatchProgress, CallbackQueue, JobProgress, PendingCallback, RunReports


def stored(value: dict) -> dict:
    """What a table gives back after a trip through the changelog (JSON: keys become strings)."""
    return json.loads(json.dumps(value))


def test_job_failures_written_by_the_old_worker_in_one_letter_form_are_read():
    old = {"p": 3, "o": 1207, "f": [[41, True], [42, False]]}
    failures = BatchFailures.from_dict(old)
    assert failures == BatchFailures(source_partition=3, source_offset=1207, failures=((41, True), (42, False)))
    assert BatchFailures.from_dict(stored(failures.to_dict())) == failures
    assert stored(failures.to_dict()) == {"partition": 3, "offset": 1207, "failures": [[41, True], [42, False]]}
    unplaced = BatchFailures.from_dict({"p": None, "o": None, "f": [[5, True]]})  # BatchCompleted without a source
    assert (unplaced.source_partition, unplaced.source_offset) == (None, None)


def test_job_progress_written_by_the_old_worker_is_read_and_written_back_compact():
    old = {"total": 250, "runs": {"0": 3, "1": 1}, "done": {"0": {"0": [100, 0], "1": [90, 10], "2": [50, 0]}},
           "locations": {"0": [[0, 10], [1, 11], [2, 12]], "1": [[0, 40]]}, "included": {"1": [7, 8]},
           "completed_runs": [0], "retry_pending": None, "touched": 1764500000.5}
    progress = JobProgress.from_dict(old)
    assert progress.runs == {0: 3, 1: 1} and progress.done[0] == RunReports(0b111, 240, 10, 0, [1])
    assert progress.locations[1] == [(0, 40)] and progress.included == {1: [7, 8]}
    assert progress.run_totals(0) is None  # already completed
    assert progress.unfinished_batches(1, progress.locations[1]) == [(0, 0, 40)]
    compact = stored(progress.to_dict())
    assert "done" not in compact and compact["reported"] == {"0": {"bits": "7", "sums": [240, 10, 0], "failed": [1]}}
    assert compact["locations"] == old["locations"]  # an older worker's locations stay where it put them
    assert JobProgress.from_dict(compact) == progress


def test_a_job_progress_value_does_not_grow_with_its_batch_count():
    """It is rewritten on every BatchCompleted: a bit per batch, not an entry (5,000 batches for 1M learners)."""
    def size_after(batches: int) -> int:
        progress = JobProgress(total=batches * 200)
        for b in range(batches):
            progress.record_batch(0, b, batches, 200 if b % 100 else 199, 0 if b % 100 else 1, {"smtp": 200})
        value = stored(progress.to_dict())
        failing = len(range(0, batches, 100))
        assert JobProgress.from_dict(value).run_totals(0) == (batches * 200 - failing, failing, 0)
        return len(json.dumps(value))

    small, large = size_after(50), size_after(5000)
    assert large - small < 5000 // 8 * 2 + 5000 // 100 * 6  # the bits (hex) and the batches that failed someone


def test_job_progress_before_the_first_batch_has_only_what_the_old_worker_had_set():
    progress = JobProgress.from_dict({"locations": {"0": [[2, 5]]}, "touched": 1.0})
    assert progress.runs == {} and progress.total is None and not progress.cancelled
    assert not progress.all_runs_completed()


def test_a_batch_is_counted_once_and_a_run_completes_when_all_its_batches_reported():
    progress = JobProgress(total=20)
    progress.runs[0] = 2
    assert progress.record_batch(0, 0, 2, 10, 0)
    assert progress.run_totals(0) is None
    assert not progress.record_batch(0, 0, 2, 10, 0)  # reported again after a crash
    assert progress.record_batch(0, 1, 2, 7, 3)
    assert progress.run_totals(0) == (17, 3, 0)


def test_a_job_counts_what_each_provider_served_once_per_batch():
    progress = JobProgress(total=30)
    assert progress.record_batch(0, 0, 2, 10, 0, {"ses": 8, "smtp": 2})
    assert not progress.record_batch(0, 0, 2, 10, 0, {"ses": 8, "smtp": 2})  # reported again: not counted again
    assert progress.record_batch(0, 1, 2, 10, 0, {"ses": 10})
    assert progress.served == {"ses": 18, "smtp": 2}
    assert JobProgress.from_dict(stored(progress.to_dict())) == progress


def test_a_done_batch_keeps_what_served_it_and_what_paced_it():
    value = BatchProgress.done(7, False, [], {"sendgrid": 7}, "paced by SendGrid rate-limit headers 10/s")
    assert BatchProgress.from_dict(stored(value.to_dict())) == value


@pytest.mark.parametrize("value", [
    BatchProgress.started(partition=4, offset=99),
    BatchProgress.done(succeeded=9, fell_back=True, failures=[(5, True)]),
])
def test_batch_progress_keeps_the_stored_form_of_the_old_worker(value):
    assert BatchProgress.from_dict(stored(value.to_dict())) == value
    if value.stage == "started":
        assert value.to_dict() == {"state": "started", "partition": 4, "offset": 99}
    else:
        assert value.to_dict() == {"state": "done", "succeeded": 9, "fell_back": True, "failures": [[5, True]]}


def test_a_callback_queue_survives_the_changelog_and_drops_its_milestones_when_the_run_is_over():
    queue = CallbackQueue(company_id=7, url="https://moodle.example/cb", key_id=None, total=10)
    assert queue.done is not None
    queue.done.add(0, 4, 1, 0)
    queue.done.add(1, 2, 0, 3)
    queue.queued.append("started")
    queue.pending.append(PendingCallback("j:0:started", "started", 0, None, "{}", 0, 1.0, 1.0))
    assert queue.to_dict()["reported"] == {"bits": "3", "sums": [6, 1, 3], "failed": [0]}
    assert CallbackQueue.from_dict(stored(queue.to_dict())) == queue
    older = {**stored(queue.to_dict()), "done": {"0": [4, 1], "1": [2, 0, 3]}}  # as a worker before RunReports
    del older["reported"]
    assert CallbackQueue.from_dict(older) == queue
    assert queue.progress() == (6, 1, 3)
    queue.done = None
    assert "done" not in queue.to_dict()
    assert CallbackQueue.from_dict(stored(queue.to_dict())).done is None


def test_a_misspelt_field_fails_instead_of_reading_as_empty():
    with pytest.raises(ValueError, match="completed_run"):
        JobProgress.from_dict({"runs": {"0": 1}, "completed_run": [0]})
    with pytest.raises(ValueError, match="offest"):
        BatchFailures.from_dict({"partition": 1, "offest": 2, "failures": []})
    with pytest.raises(KeyError):
        BatchProgress.from_dict({"state": "done", "succeeded": 1, "failures": []})
