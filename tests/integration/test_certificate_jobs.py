"""Certificate jobs end to end through the real worker and projector: PDFs in moto's S3 and on disk, QR codes,
re-runs that issue nothing new, template versions, non-Latin names, verification, ZIP download, fallback."""

from __future__ import annotations

import asyncio
import email
import hashlib
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest

from content.certificates.templates import CertificateTemplateStore
from eventlog.publisher import EventPublisher
from offload.client import change_company_settings, submit_job
from schemas.envelope import Record
from schemas.events import BatchCompleted, BatchDispatched, CertificateIssued, JobFellBackToLocal
from schemas.events.suppression import RecipientUnsubscribed, SuppressionAdded
from streams.issued_certificates import verify_certificate, zip_certificates
from tests.support.certificates import decode_qr, pdf_text
from tests.support.moto_server import free_port, moto_server, s3_client
from tests.support.observe import events, query, records, wait_for, wait_for_job
from tests.support.process_health import When

pytestmark = pytest.mark.integration

COURSE = "Fire Safety 101"
NAMES = [("Amélie", "Dubois"), ("Анна", "Кузнецова"), ("Νικόλαος", "Παπαδόπουλος"), ("小明", "王"),
         ("Siobhán", "Ní Bhriain")]


def certificate_job(job_factory, job_id: str, company_id: int, start: int, names=NAMES) -> dict:
    job = job_factory(job_id, len(names), company_id=company_id, job_type="certificate",
                      template_id="course_completion", start=start,
                      template_data={"course_name": COURSE, "completion_date": "2026-11-20",
                                     "signer_name": "Dr. Helena Marsh"})
    for recipient, (first, last) in zip(job["recipients"], names, strict=True):
        recipient.update(firstname=first, lastname=last)
    return job


def issued(settings, job_id: str) -> dict[int, CertificateIssued]:
    return {e.userid: e for e in events(settings, "outcomes") if isinstance(e, CertificateIssued) and e.job_id == job_id}


def test_certificate_jobs_issue_verifiable_pdfs_once_in_s3_and_on_disk(
    settings_factory, topics_for, processes, moto, job_factory, tmp_path: Path
):
    bucket = f"certs-{uuid.uuid4().hex[:10]}"
    settings = settings_factory(
        aws_endpoint_url=moto.endpoint_url, aws_access_key_id="testing", aws_secret_access_key="testing",
        certificate_bucket=bucket, certificate_storage_root=tmp_path / "certs",
        certificate_template_dir=tmp_path / "templates", certificate_render_processes=2,
        certificate_verify_base_url="https://moodle.example.org/offload/verify",
    )
    s3 = s3_client(moto)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    topics_for(settings)
    asyncio.run(change_company_settings(settings, 7, cloud_enabled=True, use_cloud_for_certificates=True,
                                        storage_provider="s3", changed_by="test"))
    worker = processes("worker", settings)
    processes("projector", settings)
    worker.wait_for_log("company 7 settings", timeout=30)

    asyncio.run(submit_job(settings, certificate_job(job_factory, "certs-cloud", 7, 1)))
    asyncio.run(submit_job(settings, certificate_job(job_factory, "certs-local", 8, 100)))
    cloud_job = wait_for_job(settings, "certs-cloud")
    local_job = wait_for_job(settings, "certs-local")
    assert (cloud_job["route"], cloud_job["provider"], local_job["route"]) == ("cloud", "s3", "local")
    assert (cloud_job["succeeded"], cloud_job["failed"], cloud_job["fell_back"]) == (len(NAMES), 0, False)

    cloud, local = issued(settings, "certs-cloud"), issued(settings, "certs-local")
    rows = {(r["job_id"], r["userid"]): r for r in query(settings, "SELECT * FROM job_recipients")}
    pdfs: dict[str, bytes] = {}
    for job_id, found, backend in (("certs-cloud", cloud, "s3"), ("certs-local", local, "local")):
        assert len(found) == len(NAMES)
        for (first, last), event in zip(NAMES, (found[u] for u in sorted(found)), strict=True):
            assert (event.backend, event.template_id, event.template_version) == (backend, "course_completion", 1)
            if backend == "s3":
                pdf = s3.get_object(Bucket=bucket, Key=event.object_key)["Body"].read()
                assert urllib.request.urlopen(event.url, timeout=10).read() == pdf  # the presigned URL works
            else:
                pdf = (tmp_path / "certs" / event.object_key).read_bytes()
                assert event.url == f"{settings.public_base_url}/certificates/{event.object_key}"
            assert hashlib.sha256(pdf).hexdigest() == event.sha256 and len(pdf) == event.size
            text = pdf_text(pdf)
            assert f"{first} {last}" in text and COURSE in text, text  # Cyrillic, Greek and CJK by extraction
            assert decode_qr(pdf) == [f"https://moodle.example.org/offload/verify/{event.code}"]
            row = rows[(job_id, event.userid)]
            assert (row["status"], row["certificate_url"], row["certificate_code"], row["certificate_sha256"]) == (
                "issued", event.url, event.code, event.sha256)
            pdfs[event.object_key] = pdf

    # Verification answers for one code, with that holder only; a made-up code is unknown.
    first = cloud[min(cloud)]
    found = asyncio.run(verify_certificate(settings, first.code.lower().replace("-", " ")))
    assert found is not None and found.problem is None
    assert (found.holder_name, found.course_name, str(found.completion_date), found.job_id) == (
        "Amélie Dubois", COURSE, "2026-11-20", "certs-cloud")
    assert asyncio.run(verify_certificate(settings, "0000-0000-0000-0000")) is None
    assert asyncio.run(verify_certificate(settings, "not a code")) is None

    # Bulk download: every certificate of the job, byte for byte, and a manifest.
    out = tmp_path / "certs-cloud.zip"
    assert asyncio.run(zip_certificates(settings, "certs-cloud", out)) == {"written": len(NAMES), "missing": 0}
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == sorted([f"{e.userid}-{e.code}.pdf" for e in cloud.values()]
                                                    + ["manifest.csv"])
        assert all(archive.read(f"{e.userid}-{e.code}.pdf") == pdfs[e.object_key] for e in cloud.values())

    # The same batch again (a redelivery after a crash) issues nothing new and writes no object.
    s3_before = {o["Key"]: (o["ETag"], o["LastModified"]) for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    disk_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "certs").rglob("*.pdf")}
    batch_records = [(rec, e) for rec, e in records(settings, "batches")
                     if isinstance(e, BatchDispatched) and e.job_id in ("certs-cloud", "certs-local")]
    assert len(batch_records) == 2

    async def redeliver() -> None:
        publisher = EventPublisher(settings, source="test")
        for rec, _ in batch_records:
            await (await publisher.send_record(Record("batches", rec.key, rec.value, list(rec.headers))))
        await publisher.stop()

    asyncio.run(redeliver())
    wait_for(lambda: len([e for e in events(settings, "jobs") if isinstance(e, BatchCompleted)]) >= 4,
             timeout=30, what="the redelivered batches to complete again")
    assert issued(settings, "certs-cloud") == cloud and issued(settings, "certs-local") == local
    assert {o["Key"]: (o["ETag"], o["LastModified"])
            for o in s3.list_objects_v2(Bucket=bucket)["Contents"]} == s3_before
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "certs").rglob("*.pdf")} == disk_before

    # A new template version: later certificates use it, earlier ones stay exactly as issued.
    store = CertificateTemplateStore(extra_dir=tmp_path / "templates")
    v1 = store.get("course_completion")
    title = v1.fields[0].model_copy(update={"text": "Certificate of Achievement"})
    v2 = store.publish(v1.model_copy(update={"fields": (title, *v1.fields[1:])}))
    assert v2.version == 2
    asyncio.run(submit_job(settings, certificate_job(job_factory, "certs-v2", 7, 200, NAMES[:2])))
    wait_for_job(settings, "certs-v2")
    later = issued(settings, "certs-v2")
    assert {e.template_version for e in later.values()} == {2}
    for event in later.values():
        text = pdf_text(s3.get_object(Bucket=bucket, Key=event.object_key)["Body"].read())
        assert "Certificate of Achievement" in text and "Completion" not in text
    for event in cloud.values():
        body = s3.get_object(Bucket=bucket, Key=event.object_key)["Body"].read()
        assert body == pdfs[event.object_key] and "Certificate of Completion" in pdf_text(body)
    for event in local.values():
        assert (tmp_path / "certs" / event.object_key).read_bytes() == pdfs[event.object_key]


def test_a_learner_without_usable_data_fails_alone_and_an_unreachable_s3_falls_back_to_local(
    settings_factory, topics_for, processes, job_factory, tmp_path: Path
):
    dead_port = free_port()
    dead_endpoint = f"http://127.0.0.1:{dead_port}"  # nothing listens there (until S3 comes back, below)
    settings = settings_factory(
        certificate_storage_endpoint_url=dead_endpoint, aws_access_key_id="testing",
        aws_secret_access_key="testing", certificate_storage_root=tmp_path / "certs",
        certificate_render_processes=1, health_port=free_port(),
    )
    topics_for(settings)
    asyncio.run(change_company_settings(settings, 7, cloud_enabled=True, use_cloud_for_certificates=True,
                                        storage_provider="s3", changed_by="test"))
    worker = processes("worker", settings)
    processes("projector", settings.model_copy(update={"health_port": 0}))  # one process per port
    worker.wait_for_log("company 7 settings", timeout=30)

    job = certificate_job(job_factory, "certs-fallback", 7, 1, NAMES[:3])
    job["recipients"][2]["completion_date"] = "20/11/2026"  # per-learner value overrides template_data
    asyncio.run(submit_job(settings, job))
    row = wait_for_job(settings, "certs-fallback")
    assert (row["route"], row["succeeded"], row["failed"], row["fell_back"]) == ("cloud", 2, 1, True)
    assert "s3 unavailable" in row["fallback_reason"]
    [fell_back] = [e for e in events(settings, "jobs") if isinstance(e, JobFellBackToLocal)]
    assert (fell_back.from_provider, fell_back.to_provider) == ("s3", "local")
    for event in issued(settings, "certs-fallback").values():
        assert event.backend == "local"
        pdf = (tmp_path / "certs" / event.object_key).read_bytes()
        assert hashlib.sha256(pdf).hexdigest() == event.sha256
    # The worker's health says which store is gone and that the local one took the certificates.
    said = wait_for(When(settings.health_port, "degraded", "storage s3", False), timeout=30)
    assert said["checks"]["storage local"]["up"] and any(r.startswith("storage s3: ") for r in said["reasons"])
    # S3 back, and no certificate since: the worker's health asks the store again and says so, idle as it is.
    with moto_server(port=dead_port) as s3:
        s3_client(s3).create_bucket(Bucket=settings.certificate_bucket,
                                    CreateBucketConfiguration={"LocationConstraint": settings.aws_region})
        back = wait_for(When(settings.health_port, "ready", "storage s3", True), timeout=60)
    assert back["checks"]["storage s3"]["reconnects"] == 1
    failed = query(settings, "SELECT error_message, retryable FROM job_recipients WHERE status = 'failed'")
    assert failed == [{"error_message": "invalid certificate data: completion_date '20/11/2026' is not an ISO "
                                        "date (YYYY-MM-DD) or unix time", "retryable": False}]

    # The service serves what it stored locally, and the QR code's verification page answers for that code.
    from urllib.parse import urlparse

    from tests.support.api import ApiServer, send

    with ApiServer(settings) as server:
        for event in issued(settings, "certs-fallback").values():
            assert event.url.startswith(settings.public_base_url)
            reply = send(server.base_url, "GET", urlparse(event.url).path, b"", {})
            assert (reply.status, hashlib.sha256(reply.raw).hexdigest()) == (200, event.sha256)
            page = send(server.base_url, "GET", f"/verify/{event.code}", b"", {"Accept": "application/json"})
            assert page.status == 200 and page.body["valid"] is True and page.body["code"] == event.code
        assert send(server.base_url, "GET", "/verify/0000-0000-0000-0000", b"", {}).status == 404
        assert send(server.base_url, "GET", "/certificates/../../etc/passwd", b"", {}).status == 404
        assert send(server.base_url, "GET", "/certificates/company-1/none.pdf", b"", {}).status == 404


def test_learners_can_be_emailed_a_link_to_their_new_certificate(settings_factory, topics_for, processes,
                                                                  job_factory, mail_sink, tmp_path):
    settings = settings_factory(smtp_port=mail_sink.port, certificate_storage_root=tmp_path / "certs")
    topics_for(settings)
    mail_sink.reject("learner803@example.org", code=550)  # the certificate is issued; the email is not
    processes("worker", settings)
    processes("projector", settings)
    job = certificate_job(job_factory, "certs-mailed", 7, start=801, names=NAMES[:4])
    job["notify_template_id"] = "certificate_ready"
    asyncio.run(submit_job(settings, job))
    row = wait_for_job(settings, "certs-mailed")
    assert (row["succeeded"], row["failed"]) == (4, 0)

    by_address = mail_sink.by_recipient()
    for userid, event in issued(settings, "certs-mailed").items():
        if userid == 803:
            assert (event.emailed, event.email_message_id) == (False, None) and "550" in event.email_error
            assert f"learner{userid}@example.org" not in by_address
            continue
        assert event.emailed is True and event.email_error is None
        (received,) = by_address[f"learner{userid}@example.org"]
        message = email.message_from_bytes(received.raw)
        assert message["Message-ID"] == event.email_message_id
        part = next(p for p in message.walk() if p.get_content_type() == "text/plain")
        body = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
        assert event.url in body and event.code in body and COURSE in body
    rows = {r["userid"]: r for r in query(settings, "SELECT * FROM job_recipients WHERE job_id = 'certs-mailed'")}
    assert rows[801]["message_id"] == issued(settings, "certs-mailed")[801].email_message_id
    assert rows[803]["status"] == "issued" and "550" in rows[803]["error_message"]


def test_the_certificate_mail_respects_every_message_suppressions_but_not_bulk_unsubscribes(
        settings_factory, topics_for, processes, job_factory, mail_sink, tmp_path):
    """A learner an admin put on the list for every message ('*'), and one whose address hard-bounced, get their
    certificate but no mail about it, and the outcome says why; an unsubscribe from a bulk list or a complaint
    (scope 'bulk') does not stop this transactional mail."""
    settings = settings_factory(smtp_port=mail_sink.port, certificate_storage_root=tmp_path / "certs")
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings)

    async def put_on_the_list() -> None:
        publisher = EventPublisher(settings, source="test")
        await publisher.start()
        try:
            await publisher.send_and_wait(SuppressionAdded(company_id=7, userid=901, source="manual",
                                                           reason="asked for no mail at all"))
            await publisher.send_and_wait(SuppressionAdded(company_id=7, userid=902, source="bounce",
                                                           reason="550 5.1.1 no such user",
                                                           email="learner902@example.org"))
            await publisher.send_and_wait(RecipientUnsubscribed(company_id=7, userid=903, list_id="course_reminder",
                                                                method="one-click"))
            await publisher.send_and_wait(SuppressionAdded(company_id=7, userid=904, scope="bulk",
                                                           source="complaint", reason="marked as spam"))
        finally:
            await publisher.stop()

    asyncio.run(put_on_the_list())
    # The worker has the four entries once a bulk mail to the four learners is suppressed for each of them.
    asyncio.run(submit_job(settings, job_factory("certs-probe", 4, start=901)))
    assert wait_for_job(settings, "certs-probe")["suppressed"] == 4

    job = certificate_job(job_factory, "certs-held", 7, start=901, names=NAMES[:5])
    job["notify_template_id"] = "certificate_ready"
    asyncio.run(submit_job(settings, job))
    row = wait_for_job(settings, "certs-held")
    assert (row["succeeded"], row["failed"], row["suppressed"]) == (5, 0, 0)  # every certificate issued

    outcomes = issued(settings, "certs-held")
    assert set(outcomes) == {901, 902, 903, 904, 905}
    for userid in (901, 902):
        event = outcomes[userid]
        assert (event.emailed, event.email_suppressed, event.email_message_id) == (False, True, None)
    assert outcomes[901].email_error == "suppressed (*, manual): asked for no mail at all"
    assert outcomes[902].email_error == "suppressed (*, bounce): 550 5.1.1 no such user"
    for userid in (903, 904, 905):
        assert outcomes[userid].emailed is True and outcomes[userid].email_suppressed is None
    by_address = mail_sink.by_recipient()
    assert {a for a in by_address if a in {f"learner{u}@example.org" for u in range(901, 906)}} == {
        "learner903@example.org", "learner904@example.org", "learner905@example.org"}
    rows = {r["userid"]: r for r in query(settings, "SELECT * FROM job_recipients WHERE job_id = 'certs-held'")}
    assert rows[901]["status"] == "issued" and rows[901]["error_message"].startswith("suppressed (*, manual)")
