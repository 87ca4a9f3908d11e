"""A worker whose table recovery lost its fetch position (streams.recovery_watch): without the watch it never
gets ready; with it, the stalled partition is fetched again and the worker gets ready; when fetching again does
not help, the worker exits with EXIT_RECOVERY_STALLED for its supervisor to restart it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.processes import settings_env, stop_child
from offload.client import submit_job
from schemas.events import JobCompleted
from streams.recovery_watch import EXIT_RECOVERY_STALLED
from tests.support.observe import events, log_of, wait_for
from tests.support.stack import REPO

pytestmark = pytest.mark.integration

STALL = 4.0


def losing_worker(settings, when: str, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(REPO)}
    with open(log_path, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.support.losing_worker", when], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def test_a_recovery_that_lost_its_fetch_position_is_mended_or_the_worker_exits(
        settings_factory, topics_for, processes, job_factory, mail_sink, tmp_path):
    settings = settings_factory(smtp_port=mail_sink.port, recovery_stall_seconds=STALL)
    topics_for(settings)
    first = processes("worker", settings)
    asyncio.run(submit_job(settings, job_factory("recovery-watch-job", 20)))
    # Its progress is in the job-progress changelog by the time it is completed (a graceful stop flushes it).
    wait_for(lambda: any(isinstance(e, JobCompleted) and e.job_id == "recovery-watch-job"
                         for e in events(settings, "jobs")), timeout=90, what="the job completed")
    first.stop()

    # Without the watch, the lost partition is never fetched again: no "Ready".
    unwatched = settings.model_copy(update={"recovery_stall_seconds": 0.0})
    path = tmp_path / "unwatched.log"
    proc = losing_worker(unwatched, "first", path)
    try:
        wait_for(lambda: "recovery lost its fetch position" in log_of(path), timeout=60, what="the position lost")
        time.sleep(6 * STALL)
        assert "Worker]: Ready" not in log_of(path)
    finally:
        stop_child(proc, timeout=20)

    # With it: fetched again after STALL seconds, then recovery completes.
    path = tmp_path / "mended.log"
    proc = losing_worker(settings, "first", path)
    try:
        wait_for(lambda: "Worker]: Ready" in log_of(path), timeout=60, what="the worker ready after the stall")
        text = log_of(path)
        assert "recovery lost its fetch position" in text
        assert "table recovery has not moved for 4 s on" in text and "fetching them again" in text
        assert proc.poll() is None
    finally:
        stop_child(proc, timeout=20)

    # When fetching again does not help, the worker says so once and exits for its supervisor.
    path = tmp_path / "exits.log"
    proc = losing_worker(settings, "every", path)
    try:
        assert proc.wait(timeout=60) == EXIT_RECOVERY_STALLED
        text = log_of(path)
        assert text.count("exiting (code 75)") == 1
        assert "table recovery stalled: " in text and "-job-progress-changelog[" in text
        assert "Worker]: Ready" not in text
    finally:
        if proc.poll() is None:
            stop_child(proc, timeout=20)
