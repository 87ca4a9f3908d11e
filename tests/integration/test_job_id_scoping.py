"""Issue 11 finding 12 where the API cannot see it: two companies' requests for one job id that reach Kafka before
either is in the read model (two API processes, or an API restart in between). The worker, which reads every
request for an id in order from one partition, decides; one company can neither block nor learn of another's id."""

from __future__ import annotations

import asyncio
import json

import pytest

from offload.client import submit_job
from schemas.events import JobAccepted, JobRequested
from security.callback_urls import seal_query
from tests.support.api import PUBLIC_CALLBACK, ApiServer, SignedClient, api_keys, without_api_keys
from tests.support.moodle_receiver import MoodleReceiver
from tests.support.observe import events, wait_for, wait_for_job

pytestmark = pytest.mark.integration

K7, K8 = "scoping-k7-secret-0123456789", "scoping-k8-secret-0123456789"


def test_one_job_id_handed_over_for_two_companies_at_once_serves_both_jobs(
        settings_factory, topics_for, processes, job_factory, mail_sink):
    """Company 8 took company 7's (predictable) id a moment earlier on another API process: neither job is
    dropped; the later one is served as "<id>..c<company>", its company reads it under the id it chose, and
    each Moodle is called back at its own URL (query sealed by the API under the id the company chose)."""
    secrets = {"cb7": "scoping-cb7-secret-0123456789abcdef", "cb8": "scoping-cb8-secret-0123456789abcdef"}
    settings = settings_factory(
        smtp_port=mail_sink.port, api_keys=api_keys(k7=(K7, 7), k8=(K8, 8)), api_allow_private_callbacks=True,
        callback_check_interval=0.2,
        callback_keys=json.dumps({key: {"secret": secret, "company_id": int(key[2:])}
                                  for key, secret in secrets.items()}))
    topics_for(settings)
    with MoodleReceiver(secrets) as moodle:

        def job(company: int, n: int, start: int) -> dict:
            # As the API hands it over: the callback URL's query sealed under the id the company chose.
            url, sealed = seal_query(moodle.url(f"/webservice/rest/server.php?wstoken=T{company}"), "race-id",
                                     settings.callback_url_secret.get_secret_value().encode())
            return job_factory("race-id", n, company_id=company, start=start, callback_url=url,
                               callback_query_sealed=sealed)

        # Both in job-requests before any worker or projector runs: neither API process could know of the other.
        asyncio.run(submit_job(settings, job(8, 2, 101)))
        asyncio.run(submit_job(settings, job(7, 3, 1)))
        asyncio.run(submit_job(settings, job(7, 3, 1)))  # Moodle resubmits
        processes("worker", without_api_keys(settings))
        processes("projector", without_api_keys(settings))
        first = wait_for_job(settings, "race-id", timeout=120)
        second = wait_for_job(settings, "race-id..c7", timeout=120)

        def completed_callbacks():
            done = {r.path.rsplit("=", 1)[1]: r for r in moodle.delivered() if r.json["event"] == "completed"}
            return done if len(done) == 2 else None

        called = wait_for(completed_callbacks, timeout=120, what="both companies' completed callbacks")
    assert (first["company_id"], first["total_recipients"], first["succeeded"]) == (8, 2, 2)
    assert (second["company_id"], second["total_recipients"], second["succeeded"]) == (7, 3, 3)
    assert sorted(mail_sink.recipient_counts().values()) == [1] * 5
    accepted = sorted((e.job_id, e.company_id) for e in events(settings, "jobs") if isinstance(e, JobAccepted))
    assert accepted == [("race-id", 8), ("race-id..c7", 7)]  # the resubmission was not a third job
    requests = [(e.job_id, e.company_id) for e in events(settings, "job-requests") if isinstance(e, JobRequested)]
    assert requests.count(("race-id..c7", 7)) >= 1
    assert {token: (r.valid, r.json["job_id"], r.json["company_id"], r.json["totals"]["total"])
            for token, r in called.items()} == {"T7": (True, "race-id", 7, 3), "T8": (True, "race-id", 8, 2)}
    with ApiServer(settings) as server:
        seen7 = SignedClient(server.base_url, "k7", K7).get("/api/v1/jobs/race-id").body
        seen8 = SignedClient(server.base_url, "k8", K8).get("/api/v1/jobs/race-id").body
    assert (seen7["job_id"], seen7["company_id"], seen7["progress"]["total"]) == ("race-id", 7, 3)
    assert (seen8["job_id"], seen8["company_id"], seen8["progress"]["total"]) == ("race-id", 8, 2)


def test_a_job_id_too_long_to_scope_is_refused_alike_whether_or_not_another_company_uses_it(
        settings_factory, topics_for, job_factory):
    """The answer to a long id never depends on whether another company holds it (it was 409 job_id_taken
    exactly when one did, and 202 otherwise); the longest id that can be scoped works for both companies."""
    settings = settings_factory(api_keys=api_keys(k7=(K7, 7), k8=(K8, 8)))
    topics_for(settings)
    held, free, longest = "h" * 126, "f" * 126, "l" * 124  # 124 = 128 - len("..c8")
    with ApiServer(settings) as server:
        k7, k8 = SignedClient(server.base_url, "k7", K7), SignedClient(server.base_url, "k8", K8)

        def submit(client: SignedClient, job_id: str, company: int):
            return client.post("/api/v1/jobs", job_factory(job_id, 1, company_id=company,
                                                           callback_url=PUBLIC_CALLBACK))

        submit(k7, held, 7)
        answers = [submit(k8, job_id, 8) for job_id in (held, free)]
        assert [(a.status, a.code) for a in answers] == [(422, "invalid_field")] * 2
        assert answers[0].body["error"]["message"] == answers[1].body["error"]["message"]
        assert (submit(k7, held, 7).status, submit(k7, free, 7).status) == (422, 422)
        first, second = submit(k8, longest, 8), submit(k7, longest, 7)
        assert (first.status, first.body["job_id"]) == (202, longest)
        assert (second.status, second.body["job_id"], second.body["created"]) == (202, longest, True)


def test_a_job_handed_over_under_an_id_another_company_holds_is_never_lost_to_its_company(
        settings_factory, topics_for, processes, job_factory, mail_sink):
    """Company 7's request for the id reached Kafka first through another API process; this API process hands
    over company 8's before either is routed. Company 8 reads its job under the id it chose the whole time: as
    submitted (the worker will route it scoped), then as routed, never 404."""
    settings = settings_factory(smtp_port=mail_sink.port, api_keys=api_keys(k7=(K7, 7), k8=(K8, 8)))
    topics_for(settings)
    asyncio.run(submit_job(settings, job_factory("seen-id", 2, company_id=7)))
    with ApiServer(settings) as server:
        k8 = SignedClient(server.base_url, "k8", K8)
        reply = k8.post("/api/v1/jobs", job_factory("seen-id", 3, company_id=8, start=11,
                                                    callback_url=PUBLIC_CALLBACK))
        assert (reply.status, reply.body["job_id"], reply.body["created"]) == (202, "seen-id", True)
        processes("worker", without_api_keys(settings))
        processes("projector", without_api_keys(settings))
        answers: list[tuple[int, str | None]] = []

        def completed():
            answer = k8.get("/api/v1/jobs/seen-id")
            answers.append((answer.status, answer.body.get("status")))
            return answer.body if answer.status == 200 and answer.body["status"] == "completed" else None

        seen = wait_for(completed, timeout=120, what="company 8's job to complete")
    assert all(status == 200 for status, _ in answers), answers
    assert (seen["job_id"], seen["company_id"], seen["progress"]["total"]) == ("seen-id", 8, 3)
    assert wait_for_job(settings, "seen-id")["company_id"] == 7
