"""The API against the real broker and database: signed ingest, idempotent resubmission, company isolation,
progress read back from the projections the real worker and projector keep, and every bad input answered."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from schemas.envelope import decode
from schemas.events import CompanySettingsChanged, JobCancelled, JobRequested, JobRetryRequested
from tests.support.api import (
    PUBLIC_CALLBACK,
    ApiServer,
    SignedClient,
    api_keys,
    raw_exchange,
    without_api_keys,
)
from tests.support.observe import events, records, wait_for

pytestmark = pytest.mark.integration

K7, K7_NEXT, K8, OPS = "k7-secret-0123456789abc", "k7-next-secret-0123456789", "k8-secret-0123456789abc", \
    "ops-secret-0123456789abc"


@pytest.fixture
def api_settings(settings_factory):
    def make(**overrides):
        keys = api_keys(k7=(K7, 7), **{"k7-next": (K7_NEXT, 7)}, k8=(K8, 8), ops=(OPS, None))
        return settings_factory(api_keys=keys, **overrides)

    return make


def clients(server: ApiServer) -> tuple[SignedClient, SignedClient, SignedClient, SignedClient]:
    return (SignedClient(server.base_url, "k7", K7), SignedClient(server.base_url, "k7-next", K7_NEXT),
            SignedClient(server.base_url, "k8", K8), SignedClient(server.base_url, "ops", OPS))


def test_a_signed_job_goes_through_once_and_only_its_company_can_follow_it(
    api_settings, topics_for, processes, job_factory, mail_sink
):
    settings = api_settings(smtp_port=mail_sink.port)
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    processes("projector", without_api_keys(settings))
    with ApiServer(settings) as server:
        k7, k7_next, k8, ops = clients(server)
        job = job_factory("api-job-1", 20, callback_url=PUBLIC_CALLBACK, callback_secret="moodle-callback-secret")
        job["recipients"][3]["email"] = "not an address"  # one recipient fails; the job does not

        first = k7.post("/api/v1/jobs", job)
        assert (first.status, first.body["job_id"], first.body["created"]) == (202, "api-job-1", True)
        # Moodle resubmits after a timeout, with the second (rotated-in) key of the same company.
        again = k7_next.post("/api/v1/jobs", job)
        assert (again.status, again.body["created"]) == (200, False)
        # Another company cannot see the job (that it may use the same id for its own job is tested in
        # test_security_api.py).

        def completed():
            reply = k7.get("/api/v1/jobs/api-job-1")
            return reply.body if reply.status == 200 and reply.body["status"] == "completed" else None

        done = wait_for(completed, timeout=90, what="the job to complete, read through the API")
        assert done["progress"] | {"rate_per_second": 0} == {
            "total": 20, "sent": 19, "failed": 1, "suppressed": 0, "pending": 0, "percent": 100.0, "rate_per_second": 0,
            "batches": {"total": 1, "done": 1}, "duplicates_removed": 0}, done["errors"]
        assert (done["route"], done["provider"]) == ("local", "smtp")
        assert "company 7 has no cloud settings" in done["reason"]
        assert [e["count"] for e in done["errors"]] == [1]

        failed = k7.get("/api/v1/jobs/api-job-1/recipients?status=failed")
        assert [(r["userid"], r["email"]) for r in failed.body["recipients"]] == [(4, "not an address")]
        page = k7.get("/api/v1/jobs/api-job-1/recipients?limit=5&offset=5")
        assert [r["userid"] for r in page.body["recipients"]] == [6, 7, 8, 9, 10]
        assert page.body["next_offset"] == 10
        assert [j["job_id"] for j in k7.get("/api/v1/jobs").body["jobs"]] == ["api-job-1"]
        assert ops.get("/api/v1/jobs?company_id=7").body["total"] == 1

        # Company isolation: another company's job is "not found", never "forbidden".
        for path in ("/api/v1/jobs/api-job-1", "/api/v1/jobs/api-job-1/recipients"):
            assert (k8.get(path).status, k8.get(path).code) == (404, "job_not_found")
        assert k8.post("/api/v1/jobs/api-job-1/retry").code == "job_not_found"
        assert k8.post("/api/v1/jobs/api-job-1/cancel").code == "job_not_found"
        assert k8.get("/api/v1/jobs").body["jobs"] == []
        assert k8.get("/api/v1/jobs?company_id=7").code == "company_not_found"
        assert ops.get("/api/v1/jobs/api-job-1").body["progress"]["sent"] == 19

        # Submitted again once finished: still the same job.
        assert k7.post("/api/v1/jobs", job).body | {"links": None} == {
            "job_id": "api-job-1", "status": "completed", "created": False, "recipients": 20, "links": None}
        assert k7.post("/api/v1/jobs/api-job-1/cancel").code == "job_finished"
        retry = k7.post("/api/v1/jobs/api-job-1/retry", {"only_retryable": False})
        assert (retry.status, retry.body["status"]) == (202, "retry_requested")

    # Exactly one request event, and no secret in the log.
    requests = records(settings, "job-requests")
    assert len(requests) == 1 and isinstance(requests[0][1], JobRequested)
    assert b"moodle-callback-secret" not in requests[0][0].value
    assert b"callback_secret" not in requests[0][0].value
    retries = [e for e in events(settings, "jobs") if isinstance(e, JobRetryRequested)]
    assert [(e.job_id, e.requested_by, e.only_retryable) for e in retries] == [("api-job-1", "k7", False)]


def test_company_settings_are_read_from_postgres_and_changed_by_events(api_settings, topics_for, processes):
    settings = api_settings()
    topics_for(settings)
    processes("projector", without_api_keys(settings))
    with ApiServer(settings) as server:
        k7, _, k8, ops = clients(server)
        assert k7.get("/api/v1/companies/7/settings").body["configured"] is False
        change = {"cloud_enabled": True, "use_cloud_for_emails": True, "use_cloud_for_certificates": False,
                  "user_threshold": 500, "email_provider": "ses", "storage_provider": "r2"}
        reply = k7.put("/api/v1/companies/7/settings", change)
        assert (reply.status, reply.body["changed_by"]) == (202, "k7")
        row = wait_for(lambda: (b := k7.get("/api/v1/companies/7/settings").body)["configured"] and b,
                       timeout=30, what="the settings row")
        assert row | {"changed_at": None} == {"company_id": 7, **change, "changed_by": "k7", "changed_at": None,
                                              "configured": True, "monthly_budget": None, "over_budget": "local"}
        assert k8.get("/api/v1/companies/7/settings").code == "company_not_found"
        assert k8.put("/api/v1/companies/7/settings", change).code == "company_not_found"
        assert ops.get("/api/v1/companies/7/settings").body["user_threshold"] == 500
        bad = k7.put("/api/v1/companies/7/settings", {**change, "user_threshold": "lots", "company_id": 8})
        assert bad.status == 422 and {p["field"] for p in bad.body["error"]["problems"]} == {"user_threshold",
                                                                                              "company_id"}
        # A job handed over but not yet routed (no worker here) can be read and cancelled by its company.
        job = {"job_id": "api-unrouted", "type": "email", "company_id": 7, "template_id": "course_reminder",
               "template_data": {"course_name": "C", "due_date": "D", "course_url": "https://moodle.example.org/"},
               "recipients": [{"userid": 1, "email": "a@example.org"}]}
        assert k7.post("/api/v1/jobs", job).status == 202
        assert k7.get("/api/v1/jobs/api-unrouted").body["status"] == "submitted"
        assert k8.get("/api/v1/jobs/api-unrouted").code == "job_not_found"
        for bad_reason in (5, "x" * 501):
            refused = k7.post("/api/v1/jobs/api-unrouted/cancel", {"reason": bad_reason})
            assert (refused.status, refused.code) == (422, "invalid_field"), refused.body
        cancel = k7.post("/api/v1/jobs/api-unrouted/cancel", {"reason": "sent by mistake"})
        assert (cancel.status, cancel.body["status"]) == (202, "cancel_requested")
    changes = [e for e in events(settings, "company-settings") if isinstance(e, CompanySettingsChanged)]
    assert [(e.company_id, e.changed_by, e.user_threshold) for e in changes] == [(7, "k7", 500)]
    cancelled = [e for e in events(settings, "jobs") if isinstance(e, JobCancelled)]
    assert [(e.job_id, e.requested_by, e.reason) for e in cancelled] == [("api-unrouted", "k7", "sent by mistake")]


def _bad_jobs(job_factory) -> list[tuple[str, object, int, str]]:
    def job(**kw):
        return job_factory("api-bad", 3, **{"callback_url": PUBLIC_CALLBACK, **kw})

    missing = job()
    del missing["template_id"]
    duplicate = job()
    duplicate["recipients"].append(dict(duplicate["recipients"][0]))
    crlf = job()
    crlf["recipients"][1]["lastname"] = "Smith\r\nBcc: everyone@example.org"
    return [
        ("malformed JSON", b'{"job_id": "api-bad", ', 400, "malformed_json"),
        ("wrong types", job(company_id="seven"), 422, "invalid_field"),
        ("missing fields", missing, 422, "missing_field"),
        ("unknown job type", job(job_type="fax"), 422, "unknown_job_type"),
        ("empty recipient list", {**job(), "recipients": []}, 422, "no_recipients"),
        ("200,000 recipients", job_factory("api-bad", 200_000), 422, "too_many_recipients"),
        ("duplicate userids", duplicate, 422, "duplicate_userids"),
        ("CR/LF in a name", crlf, 422, "control_characters"),
        ("CR/LF in a subject", job(template_data={"subject": "Hello\r\nBcc: all@example.org"}), 422,
         "control_characters"),
        ("template injection", job(template_data={"course_name": "{{ cycler.__init__.__globals__ }}"}), 422,
         "template_injection"),
        ("another company's job", job(company_id=8), 403, "company_mismatch"),
        ("callback to loopback", job(callback_url="http://127.0.0.1:8080/cb"), 422, "callback_url_forbidden"),
        ("callback to cloud metadata", job(callback_url="http://169.254.169.254/latest/meta-data/"), 422,
         "callback_url_forbidden"),
        ("callback to a private network", job(callback_url="https://10.0.0.7/cb"), 422, "callback_url_forbidden"),
        ("callback to localhost by name", job(callback_url="http://localhost/cb"), 422, "callback_url_forbidden"),
    ]


def test_every_bad_input_is_answered_with_its_code_writes_nothing_and_leaves_the_service_running(
    api_settings, topics_for, job_factory
):
    settings = api_settings()
    topics_for(settings)
    with ApiServer(settings) as server:
        k7, *_ = clients(server)
        replies = {}
        for what, body, status, code in _bad_jobs(job_factory):
            reply = replies[what] = k7.post("/api/v1/jobs", body)
            assert (reply.status, reply.code) == (status, code), f"{what}: {reply.status} {reply.raw[:300]!r}"
            assert reply.body["error"]["message"], what
        too_many = replies["200,000 recipients"].body["error"]["problems"][0]
        assert "limit of 100000" in too_many["message"]

        good = json.dumps(job_factory("api-auth", 2, callback_url=PUBLIC_CALLBACK)).encode()
        now = int(time.time())
        auth_cases = [
            ("bad signature", k7.headers("POST", "/api/v1/jobs", good, secret="wrong-secret-0123456789"),
             "bad_signature"),
            ("signature of another body", k7.headers("POST", "/api/v1/jobs", good + b" "), "bad_signature"),
            ("unknown key id", k7.headers("POST", "/api/v1/jobs", good, key_id="k99"), "unknown_key"),
            ("stale timestamp", k7.headers("POST", "/api/v1/jobs", good, timestamp=now - 301), "stale_timestamp"),
            ("timestamp from the future", k7.headers("POST", "/api/v1/jobs", good, timestamp=now + 400),
             "stale_timestamp"),
            ("no signature", {"Content-Type": "application/json"}, "missing_signature"),
        ]
        for what, headers, code in auth_cases:
            reply = k7.post("/api/v1/jobs", good, headers=headers)
            assert (reply.status, reply.code) == (401, code), what
        replayed = k7.headers("GET", "/api/v1/jobs", b"")
        assert k7.get("/api/v1/jobs", headers=replayed).status == 200
        assert (k7.get("/api/v1/jobs", headers=replayed).code) == "replayed_request"
        replayed_post = k7.headers("POST", "/api/v1/jobs", b"{}")
        assert k7.post("/api/v1/jobs", b"{}", headers=replayed_post).status == 422
        assert k7.post("/api/v1/jobs", b"{}", headers=replayed_post).code == "replayed_request"

        # An oversized body is refused on its Content-Length, before a byte of it is read ...
        limit = settings.api_max_body_bytes
        head = _raw_head(k7, "POST", "/api/v1/jobs", f"Content-Length: {limit + 1}")
        answer = raw_exchange(server.port, head, [b"{" * 1024])
        assert answer.startswith(b"HTTP/1.1 413") and b'"body_too_large"' in answer
        # ... and a chunked body without a Content-Length is cut off at the limit while streaming.
        head = _raw_head(k7, "POST", "/api/v1/jobs", "Transfer-Encoding: chunked")
        chunk = b"x" * (1024 * 1024)
        parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (limit // len(chunk) + 2) + [b"0\r\n\r\n"]
        answer = raw_exchange(server.port, head, parts)
        assert answer.startswith(b"HTTP/1.1 413") and b'"body_too_large"' in answer

        # Still serving, and nothing was handed to Kafka.
        assert k7.get("/api/v1/jobs").status == 200
        assert k7.get("/api/v1/health").status == 200
    assert records(settings, "job-requests") == []


def _raw_head(client: SignedClient, method: str, path: str, length_header: str) -> bytes:
    # Signed over an empty body: the signature is checked only after the body, which is never read.
    headers = client.headers(method, path, b"")
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", length_header,
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def test_the_callback_of_a_job_may_point_inside_when_configuration_allows_it(api_settings, topics_for, job_factory):
    settings = api_settings(api_allow_private_callbacks=True)
    topics_for(settings)
    with ApiServer(settings) as server:
        k7, *_ = clients(server)
        reply = k7.post("/api/v1/jobs", job_factory("api-private-cb", 1, callback_url="http://127.0.0.1:9/cb"))
        assert reply.status == 202
    [(record, event)] = records(settings, "job-requests")
    assert decode(record.value, record.headers).callback_url == "http://127.0.0.1:9/cb"  # type: ignore[union-attr]
    assert isinstance(event, JobRequested)


def test_the_same_job_sent_concurrently_becomes_one_request_event(api_settings, topics_for, job_factory):
    settings = api_settings()
    topics_for(settings)
    job = job_factory("api-concurrent", 2_000, callback_url=PUBLIC_CALLBACK)
    with ApiServer(settings) as server:
        k7, k7_next, *_ = clients(server)
        with ThreadPoolExecutor(max_workers=6) as pool:
            replies = list(pool.map(lambda c: c.post("/api/v1/jobs", job), [k7, k7_next] * 3))
    assert sorted(r.status for r in replies) == [200] * 5 + [202]
    assert sum(r.body["created"] for r in replies) == 1
    assert len(records(settings, "job-requests")) == 1
