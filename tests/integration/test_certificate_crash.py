"""SIGKILL the worker in the middle of a certificate job stored in S3 (uploads signed by adapters.storage.sigv4 in
the store's threads), start it again: every learner ends with exactly one CertificateIssued, and every object
in the bucket is the one recorded (same key, same sha256), readable through its presigned URL."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from offload.client import change_company_settings, submit_job
from schemas.events import CertificateIssued, RecipientFailed
from tests.support.moto_server import s3_client
from tests.support.observe import events, wait_for, wait_for_job

pytestmark = pytest.mark.integration
N = 800


def test_a_killed_worker_leaves_one_certificate_per_learner_in_s3(settings_factory, topics_for, processes, moto,
                                                                    job_factory, tmp_path: Path):
    bucket = f"certs-{uuid.uuid4().hex[:10]}"
    settings = settings_factory(
        aws_endpoint_url=moto.endpoint_url, aws_access_key_id="testing", aws_secret_access_key="testing",
        certificate_bucket=bucket, certificate_storage_root=tmp_path / "certs", certificate_render_processes=1,
        job_batch_size=50, stall_redispatch_seconds=8,
    )
    s3 = s3_client(moto)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    topics_for(settings)
    asyncio.run(change_company_settings(settings, 7, cloud_enabled=True, use_cloud_for_certificates=True,
                                        storage_provider="s3", changed_by="test"))
    worker = processes("worker", settings)
    processes("projector", settings)
    worker.wait_for_log("company 7 settings", timeout=60)
    job = job_factory("cert-crash", N, job_type="certificate", template_id="course_completion",
                      template_data={"course_name": "Fire Safety 101", "completion_date": "2026-11-20"})
    asyncio.run(submit_job(settings, job))

    def issued() -> list[CertificateIssued]:
        return [e for e in events(settings, "outcomes") if isinstance(e, CertificateIssued)]

    wait_for(lambda: len(issued()) >= 60, timeout=180, what="some certificates issued")
    worker.kill()
    before = {e.userid for e in issued()}
    assert len(before) < N, "the job finished before the crash; make it longer"

    processes("worker", settings)
    row = wait_for_job(settings, "cert-crash", timeout=300)
    assert (row["route"], row["succeeded"], row["failed"], row["fell_back"]) == ("cloud", N, 0, False)

    outcomes = [e for e in events(settings, "outcomes") if isinstance(e, CertificateIssued | RecipientFailed)]
    per_learner = Counter(e.userid for e in outcomes)
    assert set(per_learner) == set(range(1, N + 1)) and set(per_learner.values()) == {1}
    recorded = {e.object_key: e for e in outcomes if isinstance(e, CertificateIssued)}
    assert all(e.backend == "s3" for e in recorded.values())
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert sorted(keys) == sorted(recorded)  # one object per learner, none left over from the crash
    for event in list(recorded.values())[:: N // 20]:  # a sample, read back the way a learner would
        with urllib.request.urlopen(event.url, timeout=10) as response:
            assert hashlib.sha256(response.read()).hexdigest() == event.sha256
