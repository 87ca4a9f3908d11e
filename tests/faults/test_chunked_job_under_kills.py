"""A job sent in chunks across two worker processes, each killed -9 mid-job: every learner still gets the
message, nobody recorded before a kill gets it again, the duplicates stay within the in-flight window, each
learner has exactly one terminal outcome, and the repeats listed across chunks are counted exactly."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from offload.client import submit_job
from schemas.events import RecipientFailed, RecipientSent
from tests.support.observe import events, wait_for, wait_for_job

pytestmark = [pytest.mark.faults, pytest.mark.integration]

N = 3000
BATCH = 50


def recorded_userids(settings) -> set[int]:
    return {e.userid for e in events(settings, "outcomes") if isinstance(e, RecipientSent | RecipientFailed)}


def test_a_chunked_job_loses_nobody_when_its_workers_are_killed(settings_factory, topics_for, processes,
                                                                job_factory, slow_sink):
    settings = settings_factory(smtp_port=slow_sink.port, job_batch_size=BATCH, smtp_connections=1,
                                max_recipients_per_job=500, stall_redispatch_seconds=15)
    topics_for(settings)
    workers = {"a": processes("worker", settings), "b": processes("worker", settings)}
    processes("projector", settings)
    payload = job_factory("chunked-fault-job", N)
    payload["recipients"].extend(payload["recipients"][395:405])  # 10 repeats, sorted onto a chunk boundary
    asyncio.run(submit_job(settings, payload, chunk_size=400))

    kills = []
    for name, fraction in (("a", 0.10), ("b", 0.30)):
        wait_for(lambda f=fraction: slow_sink.count() >= f * N, timeout=180, interval=0.05,
                 what=f"{fraction:.0%} sent before killing worker {name}")
        assert slow_sink.count() < N, "the job finished before the kill; make it longer"
        workers[name].kill()
        kills.append((recorded_userids(settings), slow_sink.recipient_counts()))
        workers[name] = processes("worker", settings)

    job = wait_for_job(settings, "chunked-fault-job", timeout=300)
    assert (job["total_recipients"], job["duplicates_removed"], job["succeeded"]) == (N, 10, N)
    counts = slow_sink.recipient_counts()
    missing = [i for i in range(1, N + 1) if counts.get(f"learner{i}@example.org", 0) < 1]
    assert missing == [], f"{len(missing)} learners never received the message"
    for recorded, at_kill in kills:
        resent = [u for u in recorded if counts[f"learner{u}@example.org"] != at_kill.get(f"learner{u}@example.org", 0)]
        assert resent == [], f"{len(resent)} recorded learners were sent again: {resent[:10]}"
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= len(kills) * BATCH, f"{duplicates} duplicates, more than the in-flight window"
    per_learner = Counter(e.userid for e in events(settings, "outcomes") if isinstance(e, RecipientSent | RecipientFailed))
    assert set(per_learner) == set(range(1, N + 1))
    assert set(per_learner.values()) == {1}
