"""bench.scale's plan of runs and the ratios its JSON line ends with: which run each target compares."""

from __future__ import annotations

from typing import Any

from bench.scale import plan, ratios


def run(n: int, chunked: bool, worker: float, projector: float, ms: float) -> dict[str, Any]:
    return {"learners": n, "sent_as": "chunks" if chunked else "one request",
            "label": f"{n}_{'chunked' if chunked else 'whole'}", "seconds": n * ms / 1000, "ms_per_learner": ms,
            "peak_rss_mb": {"api": 100.0, "worker": worker, "projector": projector}}


def test_plan_sends_the_smallest_size_again_in_chunks_only_when_asked() -> None:
    assert plan([10_000, 100_000, 1_000_000], 10_000, False) == [(10_000, False), (100_000, True),
                                                                  (1_000_000, True)]
    assert plan([10_000, 100_000, 1_000_000], 10_000, True) == [(10_000, False), (10_000, True), (100_000, True),
                                                                 (1_000_000, True)]
    # Already chunked: nothing to add.
    assert plan([100_000, 300_000], 10_000, True) == [(100_000, True), (300_000, True)]


def test_targets_name_both_baselines_and_judge_each() -> None:
    results = [run(10_000, False, 140.0, 72.0, 1.1), run(10_000, True, 170.0, 74.0, 1.2),
               run(100_000, True, 175.0, 76.0, 1.0), run(1_000_000, True, 190.0, 88.0, 1.1)]
    targets = ratios(results)["targets"]
    assert targets["peak_rss_1000000_chunked_vs_10000_whole"] == {"api": 1.0, "worker": 1.36, "projector": 1.22}
    assert targets["peak_rss_1000000_chunked_vs_10000_chunked"] == {"api": 1.0, "worker": 1.12, "projector": 1.19}
    # Time per learner against the next size down sent the same way, not the chunked 10k run.
    assert targets["time_per_learner_1000000_chunked_vs_100000_chunked"] == 1.1
    assert targets["met"] == {"worker_rss": False, "projector_rss": False, "time_per_learner": True,
                              "worker_rss_same_path": True, "projector_rss_same_path": True}


def test_without_the_chunked_small_run_only_the_first_baseline_is_judged() -> None:
    results = [run(10_000, False, 140.0, 72.0, 1.1), run(100_000, True, 175.0, 76.0, 1.0)]
    targets = ratios(results)["targets"]
    assert set(targets) == {"peak_rss_100000_chunked_vs_10000_whole", "time_per_learner_100000_chunked_vs_10000_whole",
                            "met"}
    assert targets["met"] == {"worker_rss": False, "projector_rss": True, "time_per_learner": True}
