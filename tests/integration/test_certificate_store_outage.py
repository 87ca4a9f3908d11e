"""The local certificate store unusable while a certificate job runs (here its root is a file, as where a share
is not mounted; a full disk fails the same way): the batch's learners wait for it, without failing, and are issued
once it takes files again. Before, every learner failed at once (retryable), each after its PDF was rendered. A
worker stopped while they wait stops at once and gives the batch up; the next worker issues each learner once."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from devtools.processes import ServiceProcess
from offload.client import change_company_settings, submit_job
from schemas.events import BatchWaitingForDependency, JobFellBackToLocal
from tests.support.moto_server import moto_server, s3_client
from tests.support.observe import events, job_row, query, wait_for, wait_for_job

pytestmark = pytest.mark.integration

LEARNERS = 24


def stored_in(settings_factory, root: Path, outage_max_seconds: float = 3600) -> Settings:
    """A test's settings with certificates stored under ``root``, rendered by one process."""
    return settings_factory(certificate_storage_root=root, certificate_render_processes=1,
                            storage_outage_max_seconds=outage_max_seconds)


def blocked_store(tmp_path: Path) -> Path:
    """The store's root, made unusable: a file stands where its directory should be."""
    root = tmp_path / "certs"
    root.write_bytes(b"not a directory")
    return root


def unblock(root: Path) -> None:
    root.unlink()
    root.mkdir()


def certificates(job_factory, job_id: str, learners: int = LEARNERS) -> dict[str, Any]:
    return job_factory(job_id, learners, job_type="certificate", template_id="course_completion",
                       template_data={"course_name": "Fire Safety 101", "completion_date": "2026-11-20"})


def started(settings: Settings, topics_for, processes, job: dict[str, Any], *, s3: bool = False) -> ServiceProcess:
    """A worker and a projector on fresh topics, and ``job`` submitted to them (its company's certificates going to
    S3 when ``s3``, else stored locally); the worker."""
    topics_for(settings)
    worker = processes("worker", settings)
    processes("projector", settings)
    if s3:
        asyncio.run(change_company_settings(settings, job["company_id"], cloud_enabled=True,
                                            use_cloud_for_certificates=True, storage_provider="s3",
                                            changed_by="test"))
        worker.wait_for_log(f"company {job['company_id']} settings", timeout=30)
    asyncio.run(submit_job(settings, job))
    return worker


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
    settings = stored_in(settings_factory, root)
    worker = started(settings, topics_for, processes, certificates(job_factory, "store-down"))
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


def test_a_disk_that_fills_up_during_the_job_holds_the_learners_left_until_it_has_room(
    settings_factory, topics_for, processes, job_factory, small_disk
) -> None:
    """A real full disk (ENOSPC): the certificates that fit are issued, the rest wait; given room, each of them
    is issued once, and every file is whole."""
    disk = small_disk("256k")
    root = disk / "certs"
    settings = stored_in(settings_factory, root)
    worker = started(settings, topics_for, processes, certificates(job_factory, "disk-full"))
    worker.wait_for_log("No space left on device; its learners wait for the certificate store", timeout=90)
    fitted = len(list(root.rglob("*.pdf")))
    assert 0 < fitted < LEARNERS

    subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
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
    settings = stored_in(settings_factory, root)
    worker = started(settings, topics_for, processes, certificates(job_factory, "store-stop"))
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
    settings = stored_in(settings_factory, root, outage_max_seconds=1)
    started(settings, topics_for, processes, certificates(job_factory, "store-gone"))
    row = wait_for_job(settings, "store-gone", timeout=120)
    assert (row["succeeded"], row["failed"]) == (0, LEARNERS), row
    rows = query(settings, "SELECT error_message, retryable FROM job_recipients WHERE job_id = 'store-gone'")
    assert {r["retryable"] for r in rows} == {True}
    assert all(re.fullmatch(r"certificate store unavailable: local certificate store .*\(waited \d+ s\)",
                            r["error_message"]) for r in rows), rows[:3]


class SlowlyUnavailable:
    """An S3 endpoint that answers every request 503 after a moment (a store in trouble), counting them."""

    def __init__(self, delay: float = 0.3) -> None:
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 - the stdlib's name
                served.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(delay)
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.requests = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlowlyUnavailable:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_cloud_store_that_failed_is_skipped_by_later_batches_until_a_check_passes(
    settings_factory, topics_for, processes, job_factory, tmp_path: Path
) -> None:
    """Each batch used to try S3 first and wait out its failure (three tries, each answered 503 after a moment
    here; against a store that never answers, three timeouts) before falling back. Now only the batches already
    started when the first put failed try it; the others store locally at once, and once a check in the background
    passes (S3 is back) the next job's certificates go to S3 again."""
    with SlowlyUnavailable() as s3:
        settings = settings_factory(certificate_storage_endpoint_url=f"http://127.0.0.1:{s3.port}",
                                    aws_access_key_id="testing", aws_secret_access_key="testing",
                                    certificate_storage_root=tmp_path / "certs", certificate_render_processes=1,
                                    breaker_cooldown_seconds=2)
        worker = started(settings, topics_for, processes, certificates(job_factory, "s3-trouble", 1000), s3=True)
        row = wait_for_job(settings, "s3-trouble", timeout=180)
        assert (row["succeeded"], row["failed"], row["fell_back"]) == (1000, 0, True), row
        fell_back = {e.batch_no: e.reason for e in events(settings, "jobs")
                     if isinstance(e, JobFellBackToLocal) and e.job_id == "s3-trouble"}
        assert sorted(fell_back) == [0, 1, 2, 3, 4]
        tried = [no for no, reason in fell_back.items() if "(skipped: " not in reason]
        # At most the two batches a worker has out at once met the failure themselves.
        assert 1 <= len(tried) <= 2, fell_back
        assert all(reason.startswith("s3 unavailable: s3 bucket ") and "503" in reason
                   for reason in fell_back.values()), fell_back
        port = s3.port
    with moto_server(port=port) as moto:
        s3_client(moto).create_bucket(Bucket=settings.certificate_bucket,
                                      CreateBucketConfiguration={"LocationConstraint": settings.aws_region})
        worker.wait_for_log("certificate store s3 answers again", timeout=60)
        asyncio.run(submit_job(settings, certificates(job_factory, "s3-back", 5)))
        row = wait_for_job(settings, "s3-back", timeout=60)
        assert (row["succeeded"], row["fell_back"]) == (5, False), row
