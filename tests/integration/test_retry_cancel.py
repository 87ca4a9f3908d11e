"""Retry serves a job's failed learners again as a new run; cancel fails the batches not yet started."""

from __future__ import annotations

import asyncio
import json

import pytest

from offload.client import cancel_job, request_retry, submit_job
from schemas.events import BatchDispatched, JobCompleted
from tests.support.observe import events, query, records, wait_for, wait_for_job

pytestmark = pytest.mark.integration


def rows(settings, job_id: str) -> dict[int, dict]:
    return {r["userid"]: r for r in query(settings, "SELECT * FROM job_recipients WHERE job_id = %s", (job_id,))}


def completed_runs(settings, job_id: str) -> list[int]:
    return sorted(e.run for e in events(settings, "jobs") if isinstance(e, JobCompleted) and e.job_id == job_id)


def test_retry_serves_only_the_failed_learners_again(settings_factory, topics_for, processes, job_factory,
                                                      mail_sink):
    settings = settings_factory(smtp_port=mail_sink.port, max_attempts=2, job_batch_size=10)
    topics_for(settings)
    mail_sink.fail_next("learner4@example.org", code=450, times=2)   # retries exhausted: retryable failure
    mail_sink.fail_next("learner15@example.org", code=450, times=2)
    mail_sink.reject("learner9@example.org", code=550)               # permanent failure
    processes("worker", settings)
    processes("projector", settings)
    payload = job_factory("retry-job", 30)
    payload["recipients"].append({"userid": 99, "email": "not-an-address", "firstname": "X", "lastname": "Y"})
    asyncio.run(submit_job(settings, payload))
    job = wait_for_job(settings, "retry-job")
    assert (job["succeeded"], job["failed"]) == (27, 4)

    # Retryable failures only: learners 4 and 15, in one new batch of run 1.
    asyncio.run(request_retry(settings, "retry-job", requested_by="admin"))
    wait_for(lambda: completed_runs(settings, "retry-job") == [0, 1], timeout=60, what="run 1 completed")
    job = wait_for_job(settings, "retry-job", run=1)  # the read model, not only the log, has seen run 1 end
    assert (job["succeeded"], job["failed"], job["batch_count"]) == (29, 2, 5)
    now = rows(settings, "retry-job")
    assert (now[4]["status"], now[4]["run"], now[15]["status"]) == ("sent", 1, "sent")
    assert (now[9]["status"], now[9]["run"], now[99]["run"]) == ("failed", 0, 0)
    batches = [e for e in events(settings, "batches") if isinstance(e, BatchDispatched)]
    retry_batches = [b for b in batches if b.run == 1]
    assert [sorted(r.userid for r in b.recipients) for b in retry_batches] == [[4, 15]]
    # Batches carry no copy of template_data: every run's batches point at the job's own request.
    [(partition, offset)] = {b.template_data_at for b in batches}
    [request] = [r for r, _ in records(settings, "job-requests") if (r.partition, r.offset) == (partition, offset)]
    assert json.loads(request.value)["template_data"] == payload["template_data"]
    counts = mail_sink.recipient_counts()
    assert counts["learner4@example.org"] == counts["learner15@example.org"] == 1
    assert counts["learner1@example.org"] == 1  # nobody who was served is served again

    # Every failure: the permanent ones are tried again (and fail again, the server still refuses).
    asyncio.run(request_retry(settings, "retry-job", only_retryable=False))
    wait_for(lambda: completed_runs(settings, "retry-job") == [0, 1, 2], timeout=60, what="run 2 completed")
    job = wait_for_job(settings, "retry-job", run=2)
    assert (job["succeeded"], job["failed"]) == (29, 2)
    now = rows(settings, "retry-job")
    assert (now[9]["run"], now[99]["run"], now[9]["status"]) == (2, 2, "failed")


def test_cancel_fails_the_batches_not_yet_started_and_retry_serves_them(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    # The sink holds the job after 100 learners until the worker has taken the cancel in: it is still running
    # when cancelled however fast or slow the machine is (small batches: few of them are under way by then).
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=20, smtp_connections=1,
                                smtp_timeout=300)  # no held send gives up meanwhile
    topics_for(settings)
    worker = processes("worker", settings)
    processes("projector", settings)
    mail_sink.hold_after(100)
    asyncio.run(submit_job(settings, job_factory("cancel-job", 2000)))
    wait_for(lambda: mail_sink.holding(), timeout=60, what="the job held at 100 learners")
    asyncio.run(cancel_job(settings, "cancel-job", requested_by="admin", reason="wrong course"))
    worker.wait_for_log("job cancel-job cancelled by admin", timeout=60)
    mail_sink.release()

    job = wait_for_job(settings, "cancel-job", status="cancelled", timeout=120)
    assert job["succeeded"] + job["failed"] == 2000
    assert 0 < job["failed"] and job["succeeded"] < 2000
    assert mail_sink.count() == job["succeeded"]
    reasons = {r["error_message"] for r in rows(settings, "cancel-job").values() if r["status"] == "failed"}
    assert reasons == {"job cancelled before this batch ran"}

    asyncio.run(request_retry(settings, "cancel-job"))
    job = wait_for(lambda: (r := query(settings, "SELECT * FROM jobs WHERE job_id = 'cancel-job'"))
                   and r[0]["status"] == "completed" and r[0], timeout=180, what="the retry to finish")
    assert (job["succeeded"], job["failed"]) == (2000, 0)
    assert set(mail_sink.recipient_counts().values()) == {1} and mail_sink.count() == 2000
