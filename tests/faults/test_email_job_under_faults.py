"""One email job across two worker processes while everything under it fails once: each worker is killed -9,
the broker restarts, Postgres is down for 20 s, the projector is killed. Afterwards every valid learner has
the message (counted at the SMTP server), nobody whose send was recorded got it twice, the few duplicates are
within the in-flight window and reported, each learner has exactly one terminal outcome in the log and in
Postgres, and the read models equal a fresh ``offload replay``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from devtools.processes import settings_env
from offload.client import submit_job
from projections.projector import Projector
from schemas.events import RecipientFailed, RecipientSent
from tests.support.faults import Timeline
from tests.support.observe import (
    READ_MODEL_TABLES,
    counts_explained,
    events,
    query,
    read_models,
    wait_for,
    wait_for_job,
)
from tests.support.stack import REPO

pytestmark = [pytest.mark.faults, pytest.mark.integration]

N_VALID = 4000
INVALID = [{"userid": 900_000 + i, "email": f"broken-{i}", "firstname": "No", "lastname": "Address"}
           for i in range(5)]
BATCH = 50

def recorded_userids(settings) -> set[int]:
    return {e.userid for e in events(settings, "outcomes") if isinstance(e, RecipientSent | RecipientFailed)}


def test_a_job_survives_killed_workers_a_broker_restart_a_postgres_outage_and_a_killed_projector(
    settings_factory, topics_for, processes, job_factory, slow_sink, stack
):
    settings = settings_factory(smtp_port=slow_sink.port, job_batch_size=BATCH, smtp_connections=1,
                                stall_redispatch_seconds=15, reconnect_max_delay=2.0,
                                smtp_timeout=300)  # a reply the relay holds (below) is waited for, not re-sent
    topics_for(settings)
    workers = {"a": processes("worker", settings), "b": processes("worker", settings)}
    projector = processes("projector", settings)
    payload = job_factory("fault-job", N_VALID)
    payload["recipients"].extend(INVALID)
    asyncio.run(submit_job(settings, payload))
    timeline = Timeline()

    def reach(fraction: float, what: str) -> int:
        wait_for(lambda: slow_sink.count() >= fraction * N_VALID, timeout=180, interval=0.05, what=what)
        count = slow_sink.count()
        assert count < N_VALID, f"the job finished before '{what}'; make it longer"
        return count

    def sends_resume(after: int) -> None:
        wait_for(lambda: slow_sink.count() >= after + 20, timeout=120, interval=0.05, what="sends to resume")

    # Each worker killed once, mid-job. What each had recorded before dying must not be sent again.
    kills = []
    for name, fraction in (("a", 0.08), ("b", 0.18)):
        reach(fraction, f"{fraction:.0%} sent before killing worker {name}")
        workers[name].kill()
        entry = timeline.mark(f"kill -9 worker {name}")
        recorded = recorded_userids(settings)  # read first: anyone recorded was sent before this count
        counts = slow_sink.recipient_counts()
        kills.append((recorded, counts))
        workers[name] = processes("worker", settings)
        entry["restarted_ready_s"] = timeline.since(entry)
        sends_resume(slow_sink.count())
        entry["sends_resumed_s"] = timeline.since(entry)

    reach(0.28, "28% sent before restarting the broker")
    entry = timeline.mark("broker restart")
    stack.restart_broker()
    entry["restart_took_s"] = timeline.since(entry)
    sends_resume(slow_sink.count())
    entry["sends_resumed_s"] = timeline.since(entry)

    reach(0.38, "38% sent before stopping Postgres")
    # The job must not end before the projector is killed, however long the outage and the projector's return
    # take: the relay holds its replies from two batches short of the end (duplicates count too, so fewer
    # learners than that have it) until a new projector is up.
    slow_sink.hold_after(N_VALID - 2 * BATCH)
    entry = timeline.mark("postgres down 20 s")
    log_before = len(projector.log_text())
    stack.stop_postgres()
    time.sleep(20)
    stack.start_postgres()
    entry["down_s"] = timeline.since(entry)
    projector.wait_for_log("projector: postgres unavailable", timeout=5, start=log_before)  # it noticed
    projector.wait_for_log("projector resumed at its stored offsets", timeout=60, start=log_before)
    entry["projector_resumed_s"] = timeline.since(entry)
    assert projector.proc is not None and projector.proc.poll() is None, "the projector exited"

    # Postgres is back (20 s of sends later, ~70% done): now the projector dies, mid-job again.
    projector.kill()
    entry = timeline.mark("kill -9 projector")
    projector = processes("projector", settings)
    entry["restarted_ready_s"] = timeline.since(entry)
    slow_sink.release()

    job = wait_for_job(settings, "fault-job", timeout=300)
    done_at = time.monotonic() - timeline.started
    for fault in timeline.faults:
        fault["job_completed_after_s"] = round(done_at - fault["at_s"], 1)
    total = N_VALID + len(INVALID)
    counted = (job["total_recipients"], job["succeeded"], job["failed"])
    assert counted == (total, N_VALID, len(INVALID)), f"{counted}: {counts_explained(settings, 'fault-job')}"

    # Every valid learner received the message, counted at the SMTP server; nobody invalid was sent anything.
    counts = slow_sink.recipient_counts()
    missing = [i for i in range(1, N_VALID + 1) if counts.get(f"learner{i}@example.org", 0) < 1]
    assert missing == [], f"{len(missing)} learners never received the message"
    assert not any(r["email"] in counts for r in INVALID)

    # A learner whose send was recorded before a kill was never sent again afterwards.
    for recorded, at_kill in kills:
        resent = [u for u in recorded if u <= N_VALID and counts[f"learner{u}@example.org"] != at_kill.get(
            f"learner{u}@example.org", 0)]
        assert resent == [], f"{len(resent)} recorded learners were sent again: {resent[:10]}"
    # Duplicates: only sends in flight when a worker died. A worker's sends without a durable outcome belong to
    # at most two consecutive batches (the next batch starts sending while this one's last chunks are out, and
    # the one after waits until this one has finished: streams.agents.batches), so a kill re-sends at most two
    # batches' worth.
    duplicates = sum(c - 1 for c in counts.values())
    window = len(kills) * 2 * BATCH
    assert duplicates <= window, f"{duplicates} duplicates, more than the in-flight window of {window}"

    # Exactly one terminal outcome per learner, in the log and in Postgres.
    outcomes = [e for e in events(settings, "outcomes") if isinstance(e, RecipientSent | RecipientFailed)]
    per_learner = Counter(e.userid for e in outcomes)
    assert set(per_learner) == set(range(1, N_VALID + 1)) | {r["userid"] for r in INVALID}
    assert set(per_learner.values()) == {1}, [u for u, c in per_learner.items() if c > 1][:10]
    rows = query(settings, "SELECT status, count(*) AS n, count(DISTINCT userid) AS learners FROM job_recipients "
                           "WHERE job_id = 'fault-job' GROUP BY 1 ORDER BY 1")
    assert rows == [{"status": "failed", "n": len(INVALID), "learners": len(INVALID)},
                    {"status": "sent", "n": N_VALID, "learners": N_VALID}]

    # The read models equal a fresh replay of the whole log (live projector stopped and caught up first).
    projector.stop()
    asyncio.run(Projector(settings).run(until_caught_up=True))
    rebuilt_schema = f"{settings.projection_schema}_replay"
    env = {**settings_env(settings), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "offload.cli", "replay", rebuilt_schema], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    live, rebuilt = read_models(settings, settings.projection_schema), read_models(settings, rebuilt_schema)
    for table in ("jobs", "job_recipients", "job_batches", "audit_log"):
        assert live[table], f"{table} is empty: the comparison proves nothing"
    for table in READ_MODEL_TABLES:
        assert rebuilt[table] == live[table], table

    report = {"learners": total, "valid": N_VALID, "missing": len(missing), "duplicates": duplicates,
              "duplicate_window": window, "faults": timeline.faults}
    print("FAULT SUITE " + json.dumps(report))
