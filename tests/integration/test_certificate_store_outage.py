"""The local certificate store unusable while a certificate job runs (here its root is a file, as where a share
is not mounted; a full disk fails the same way): the batch's learners wait for it, without failing, and are issued
once it takes files again. Before, every learner failed at once (retryable), each after its PDF was rendered. A
worker stopped while they wait stops at once and gives the batch up; the next worker issues each learner once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from offload.client import submit_job
from schemas.events import BatchWaitingForDependency
from tests.support.observe import events, job_row, query, wait_for, wait_for_job

pytestmark = pytest.mark.integration

LEARNERS = 24


def blocked_store(tmp_path: Path) -> Path:
    """The store's root, made unusable: a file stands where its directory should be."""
    root = tmp_path / "certs"
    root.write_bytes(b"not a directory")
    return root


def unblock(root: Path) -> None:
    root.unlink()
    root.mkdir()


def submit(settings: Settings, job_id: str, job_factory) -> None:
    job = job_factory(job_id, LEARNERS, job_type="certificate", template_id="course_completion",
                      template_data={"course_name": "Fire Safety 101", "completion_date": "2026-11-20"})
    asyncio.run(submit_job(settings, job))


def issued_each_once(settings: Settings, job_id: str, root: Path) -> None:
    row = wait_for_job(settings, job_id, timeout=120)
    assert (row["succeeded"], row["failed"]) == (LEARNERS, 0), row
    rows = query(settings, f"SELECT status, count(*) AS n FROM job_recipients WHERE job_id = '{job_id}' "
                           "GROUP BY status")
    assert [(r["status"], r["n"]) for r in rows] == [("issued", LEARNERS)]
    assert len(list(root.rglob("*.pdf"))) == LEARNERS


def test_learners_wait_for_an_unusable_local_store_and_are_issued_once_it_takes_files_again(
    settings_factory, topics_for, processes, job_factory, tmp_path: Path
) -> None:
    root = blocked_store(tmp_path)
    settings = settings_factory(certificate_storage_root=root, certificate_render_processes=1,
                                storage_outage_max_seconds=3600)
    topics_for(settings)
    worker = processes("worker", settings)
    processes("projector", settings)
    submit(settings, "store-down", job_factory)
    worker.wait_for_log("its learners wait for the certificate store", timeout=90)
    # The job's page says why it stands still, from the batch's one BatchWaitingForDependency.
    pacing = wait_for(lambda: (job_row(settings, "store-down") or {}).get("pacing"), what="the job's pacing")
    assert re.fullmatch(r"waiting for storage local: local certificate store .*/certs: \[Errno \d+\] "
                        r"(Not a directory|File exists).*", pacing), pacing

    unblock(root)
    issued_each_once(settings, "store-down", root)
    worker.wait_for_log("the certificate store takes puts again", timeout=30)
    assert job_row(settings, "store-down")["pacing"] is None  # the batch's BatchCompleted ended the wait
    waits = [e for e in events(settings, "jobs") if isinstance(e, BatchWaitingForDependency)]
    assert [(e.job_id, e.batch_no, e.dependency) for e in waits] == [("store-down", 0, "storage local")]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A file system of 256 KiB of its own (tmpfs): room for a few certificates. Mounting needs root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_a_disk_that_fills_up_during_the_job_holds_the_learners_left_until_it_has_room(
    settings_factory, topics_for, processes, job_factory, small_disk: Path
) -> None:
    """A real full disk (ENOSPC): the certificates that fit are issued, the rest wait; given room, each of them
    is issued once, and every file is whole."""
    root = small_disk / "certs"
    settings = settings_factory(certificate_storage_root=root, certificate_render_processes=1,
                                storage_outage_max_seconds=3600)
    topics_for(settings)
    worker = processes("worker", settings)
    processes("projector", settings)
    submit(settings, "disk-full", job_factory)
    worker.wait_for_log("No space left on device; its learners wait for the certificate store", timeout=90)
    fitted = len(list(root.rglob("*.pdf")))
    assert 0 < fitted < LEARNERS

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    issued_each_once(settings, "disk-full", root)
    rows = query(settings, "SELECT certificate_sha256, certificate_url FROM job_recipients WHERE job_id = 'disk-full'")
    for row in rows:
        path = root / row["certificate_url"].split("/certificates/", 1)[1]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["certificate_sha256"]
    assert not list(root.rglob("*.tmp"))


def test_a_worker_stopped_while_its_learners_wait_for_the_store_stops_and_the_next_issues_each_once(
    settings_factory, topics_for, processes, job_factory, tmp_path: Path
) -> None:
    root = blocked_store(tmp_path)
    settings = settings_factory(certificate_storage_root=root, certificate_render_processes=1,
                                storage_outage_max_seconds=3600)
    topics_for(settings)
    worker = processes("worker", settings)
    processes("projector", settings)
    submit(settings, "store-stop", job_factory)
    worker.wait_for_log("its learners wait for the certificate store", timeout=90)

    assert worker.terminate(timeout=90) >= 0
    text = worker.log_text()
    assert re.search(r"batch store-stop:0:0 given up for now, unacked, as the worker stops or rebalances while its "
                     r"sends wait \(certificate store unavailable: local certificate store ", text), text[-3000:]
    assert "wait_empty: Waiting for tasks" not in text

    unblock(root)
    processes("worker", settings)
    issued_each_once(settings, "store-stop", root)


def test_an_outage_longer_than_the_setting_fails_the_learners_as_retryable(
    settings_factory, topics_for, processes, job_factory, tmp_path: Path
) -> None:
    root = blocked_store(tmp_path)
    settings = settings_factory(certificate_storage_root=root, certificate_render_processes=1,
                                storage_outage_max_seconds=1)
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings)
    submit(settings, "store-gone", job_factory)
    row = wait_for_job(settings, "store-gone", timeout=120)
    assert (row["succeeded"], row["failed"]) == (0, LEARNERS), row
    rows = query(settings, "SELECT error_message, retryable FROM job_recipients WHERE job_id = 'store-gone'")
    assert {r["retryable"] for r in rows} == {True}
    assert all(re.fullmatch(r"certificate store unavailable: local certificate store .*\(waited \d+ s\)",
                            r["error_message"]) for r in rows), rows[:3]
