"""Who is still failed after every run of a job, and so who a retry would serve: pure logic over progress state.

A job's first run (0) serves everyone; each retry run n serves a chosen set of earlier failures ("included").
A learner's standing is decided by the last run that served them: failed if that run failed them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple


class Failure(NamedTuple):
    retryable: bool
    run: int
    batch_no: int


def current_failures(state: Mapping[str, Any],
                     failures_of: Callable[[int, int], list[list[Any]]]) -> dict[int, Failure]:
    """userid -> where and how they last failed. ``failures_of(run, batch)`` gives [[userid, retryable], ...]."""
    failed: dict[int, Failure] = {}
    for run in sorted(int(r) for r in state.get("runs", {})):
        for userid in state.get("included", {}).get(str(run), []):
            failed.pop(userid, None)
        for batch, counts in sorted(state.get("done", {}).get(str(run), {}).items(), key=lambda kv: int(kv[0])):
            if counts[1]:
                for userid, retryable in failures_of(run, int(batch)):
                    failed[userid] = Failure(bool(retryable), run, int(batch))
    return failed


def choose(failed: Mapping[int, Failure], *, only_retryable: bool) -> dict[int, Failure]:
    return {u: f for u, f in failed.items() if f.retryable or not only_retryable}


def all_runs_completed(state: Mapping[str, Any]) -> bool:
    runs = {int(r) for r in state.get("runs", {})}
    return bool(runs) and runs <= set(state.get("completed_runs", []))
