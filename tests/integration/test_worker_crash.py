"""SIGKILL the worker in the middle of a job, start it again: every learner ends with exactly one terminal
outcome, and nobody whose send had been recorded before the crash receives a second message."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest

from offload.client import submit_job
from schemas.events import BatchDispatched, RecipientFailed, RecipientSent
from tests.support.observe import events, query, wait_for, wait_for_job

pytestmark = pytest.mark.integration

N = 6000


def test_a_killed_worker_resumes_without_resending_recorded_recipients(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    # One batch at a time over two SMTP connections: the job lasts long enough to be killed in the middle
    # of a batch, so the restarted worker must read back that batch's recorded outcomes.
    # The stall sweep (a run's unfinished batches sent again after a quiet spell) is a safety net the restarted
    # worker must not need: set far beyond a restart on a loaded machine, and checked below that it never fired.
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=100, smtp_connections=2,
                                stall_redispatch_seconds=120)
    topics_for(settings)
    # Batches go one at a time, 100 learners each: the sink holds every message after the middle of a batch a
    # quarter into the job, so the worker stands still there, however fast or loaded the machine is.
    hold_at = N // 4 + 50
    mail_sink.hold_after(hold_at)
    worker = processes("worker", settings)
    processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("crash-job", N)))

    wait_for(lambda: mail_sink.count() == hold_at, timeout=120, what="the middle of a batch, a quarter into the job")
    # Outcomes reach the log shortly after the sends (they are produced in the background): kill once every
    # accepted message is recorded, so the batch in flight has recorded half its learners.
    wait_for(lambda: len({e.userid for e in events(settings, "outcomes") if isinstance(e, RecipientSent)})
             == hold_at, timeout=60, what="every accepted send recorded in the log")
    worker.kill()
    sent_before_kill = mail_sink.count()
    mail_sink.release()
    assert sent_before_kill < N, "the job finished before the crash; make it longer"
    recorded_before = [e for e in events(settings, "outcomes") if isinstance(e, RecipientSent | RecipientFailed)]
    recorded_userids = {e.userid for e in recorded_before}
    assert 0 < len(recorded_userids) < N

    restarted = processes("worker", settings)
    job = wait_for_job(settings, "crash-job", timeout=240)
    assert (job["total_recipients"], job["succeeded"], job["failed"]) == (N, N, 0)
    # Every batch came back from the log by itself: none waited for the stall sweep to be sent again.
    assert "made no progress" not in restarted.log_text()

    # Exactly one terminal outcome per learner, in the log and in the read model.
    outcomes = [e for e in events(settings, "outcomes") if isinstance(e, RecipientSent | RecipientFailed)]
    per_learner = Counter(e.userid for e in outcomes)
    assert set(per_learner) == set(range(1, N + 1))
    assert set(per_learner.values()) == {1}, [u for u, c in per_learner.items() if c > 1][:10]
    rows = query(settings, "SELECT status, count(*) AS n FROM job_recipients WHERE job_id = 'crash-job' GROUP BY 1")
    assert rows == [{"status": "sent", "n": N}]

    # Everyone got the message; a learner whose send was recorded before the crash got it once only.
    counts = mail_sink.recipient_counts()
    assert all(counts.get(f"learner{i}@example.org", 0) >= 1 for i in range(1, N + 1))
    resent = [u for u in recorded_userids if counts[f"learner{u}@example.org"] != 1]
    assert resent == [], f"{len(resent)} recorded recipients were sent again"
    # Only sends in flight at the moment of the kill (not yet recorded) may have gone out twice: those the sink had
    # taken, and those written whole on a session, which it takes once released (a window of BDAT transactions).
    duplicates = sum(c - 1 for c in counts.values())
    written = settings.smtp_connections * max(2, settings.smtp_window)
    assert duplicates <= sent_before_kill - len(recorded_userids) + written
    # The restarted worker found the half-done batch and read its recorded outcomes back from the log. Batches
    # after it may have been taken too: the next one handed to the sessions (queued behind the first one's last
    # chunks) and the one after that composed and held until the first one's outcomes are in the log, never more;
    # and the one before it, every outcome recorded, may have been cut short in its BatchCompleted (its step 4
    # still runs when the one after next is taken: streams/agents/batches.py).
    resumed = {batch: int(n) for batch, n in re.findall(
        r"batch (\S+) served again \(after a crash, a stop or a rebalance\): (\d+) of 100 already recorded",
        restarted.log_text())}
    assert any(0 < n < 100 for n in resumed.values()), resumed
    recorded_whole = [batch for batch, n in resumed.items() if n == 100]
    assert len(recorded_whole) <= 1 and len(resumed) - len(recorded_whole) <= 3, \
        f"more batches were taken than may be in flight: {resumed}"
    # Whoever was sent twice was in one of at most two batches: only two batches send at once.
    batch_of = {r.userid: e.batch_no for e in events(settings, "batches") if isinstance(e, BatchDispatched)
                for r in e.recipients}
    twice = {batch_of[int(address.removeprefix("learner").split("@")[0])] for address, c in counts.items() if c > 1}
    assert len(twice) <= 2, f"learners of {len(twice)} batches were sent twice: {sorted(twice)}"
