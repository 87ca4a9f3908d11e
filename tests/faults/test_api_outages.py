"""The API through a Postgres outage and a broker outage: requests that need the missing dependency answer 503
with Retry-After instead of 500 or a hang, health says degraded and why, and both recover by themselves."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from resilience.dependencies import DEPENDENCIES
from tests.support.api import PUBLIC_CALLBACK, ApiServer, SignedClient, api_keys, send
from tests.support.observe import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SECRET = "outage-k7-secret-0123456789abcdef"


def signed(client: SignedClient, method: str, path: str, body: object = None) -> tuple[int, dict, dict[str, str]]:
    """Status, JSON body and headers (Retry-After is what this test is about)."""
    data = b"" if body is None else json.dumps(body).encode()
    request = urllib.request.Request(client.base_url + path, data=data if method != "GET" else None,
                                     method=method, headers=client.headers(method, path, data))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # a hang fails the test here
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def health(base: str) -> dict:
    return send(base, "GET", "/api/v1/health", b"", {}).body


def test_reads_answer_503_while_postgres_is_down_and_recover_by_themselves(settings_factory, topics_for, stack):
    settings = settings_factory(api_keys=api_keys(k7=(SECRET, 7)), api_db_timeout=2.0, api_health_interval=0.3,
                                api_retry_after=7)
    topics_for(settings)
    with ApiServer(settings) as api:
        client = SignedClient(api.base_url, "k7", SECRET)
        wait_for(lambda: health(api.base_url)["status"] == "ready", timeout=30, what="a ready API")
        assert signed(client, "GET", "/api/v1/jobs")[0] == 200
        before = DEPENDENCIES.snapshot()["postgres"].reconnects

        stack.stop_postgres()
        try:
            status, body, headers = signed(client, "GET", "/api/v1/jobs")
            assert (status, body["error"]["code"], headers["Retry-After"]) == (503, "database_unavailable", "7")
            status, body, headers = signed(client, "GET", "/api/v1/jobs/any-job")
            assert (status, headers["Retry-After"]) == (503, "7")
            degraded = wait_for(lambda: (h := health(api.base_url))["status"] == "degraded" and h, timeout=30,
                                what="health to say degraded")
            assert degraded["checks"]["postgres"]["up"] is False
            assert any(r.startswith("postgres: ") for r in degraded["reasons"]), degraded
        finally:
            stack.start_postgres()

        # Back by itself: no restart of the API, no request failing once Postgres answers.
        wait_for(lambda: signed(client, "GET", "/api/v1/jobs")[0] == 200, timeout=60, what="reads to recover")
        ready = wait_for(lambda: (h := health(api.base_url))["status"] == "ready" and h, timeout=30,
                         what="health to say ready")
        assert ready["checks"]["postgres"]["reconnects"] >= before + 1 and ready["reasons"] == []


def test_job_hand_off_answers_503_while_the_broker_is_gone_and_accepts_once_it_is_back(
    settings_factory, topics_for, job_factory, stack
):
    settings = settings_factory(api_keys=api_keys(k7=(SECRET, 7)), api_handoff_timeout=3.0,
                                api_health_interval=0.3, api_retry_after=5)
    topics_for(settings)
    with ApiServer(settings) as api:
        client = SignedClient(api.base_url, "k7", SECRET)
        wait_for(lambda: health(api.base_url)["status"] == "ready", timeout=30, what="a ready API")
        assert signed(client, "POST", "/api/v1/jobs", job_factory("before", 3, callback_url=PUBLIC_CALLBACK))[0] == 202

        stack.stop_broker()
        try:
            job = job_factory("during-outage", 3, callback_url=PUBLIC_CALLBACK)
            status, body, headers = signed(client, "POST", "/api/v1/jobs", job)
            assert (status, body["error"]["code"], headers["Retry-After"]) == (503, "broker_unavailable", "5")
            degraded = wait_for(lambda: (h := health(api.base_url))["status"] == "degraded" and h, timeout=30,
                                what="health to say degraded")
            assert degraded["checks"]["kafka"]["up"] is False, degraded
            assert signed(client, "GET", "/api/v1/jobs")[0] == 200  # reads need only Postgres
            # Other requests that produce an event are bounded the same way.
            status, body, headers = signed(client, "POST", "/api/v1/jobs/before/cancel", {})
            assert (status, body["error"]["code"], headers["Retry-After"]) == (503, "broker_unavailable", "5")
        finally:
            stack.start_broker()

        # The same job again once the broker is back: handed over (or known, if the first try landed late).
        def accepted() -> int | None:
            status = signed(client, "POST", "/api/v1/jobs", job)[0]
            return status if status in (200, 202) else None

        assert wait_for(accepted, timeout=120, interval=1.0, what="the hand-off to work again") in (200, 202)
        wait_for(lambda: health(api.base_url)["status"] == "ready", timeout=60, what="health to say ready")
