"""Issue 11 finding 11 through the real API (signing, Postgres read pool, Kafka hand-off): bad input is a 4xx with
a code, never a 500, and nothing the worker could not read back reaches Kafka."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import JobRequested
from tests.support.api import PUBLIC_CALLBACK, ApiServer, SignedClient, api_keys
from tests.support.observe import records

pytestmark = pytest.mark.integration

K7 = "bad-input-k7-secret-0123456789"


def _nested_job(job_factory, job_id: str, depth: int) -> bytes:
    job = job_factory(job_id, 2, callback_url=PUBLIC_CALLBACK)
    job["template_data"]["nested"] = "HOLE"
    return json.dumps(job).encode().replace(b'"HOLE"', b"[" * depth + b"]" * depth)


# Non-ASCII decimal digits and other numerals str.isdigit() says yes to.
numerals = st.text(st.characters(categories=["Nd", "No"], exclude_characters="0123456789"), min_size=1, max_size=4)


def test_deep_json_and_non_ascii_numbers_are_4xx_with_a_code_and_nothing_undecodable_reaches_kafka(
        settings_factory, topics_for, job_factory):
    settings_ = settings_factory(api_keys=api_keys(k7=(K7, 7)))
    topics_for(settings_)
    with ApiServer(settings_) as server:
        k7 = SignedClient(server.base_url, "k7", K7)
        for depth in (250, 600, 5000):  # past pydantic's 200 (the event readers), and past json.loads' ~990
            reply = k7.post("/api/v1/jobs", _nested_job(job_factory, f"deep-{depth}", depth))
            assert (reply.status, reply.code) == (400, "malformed_json"), (depth, reply.body)
        reply = k7.put("/api/v1/companies/7/settings", b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}")
        assert (reply.status, reply.code) == (400, "malformed_json")
        ok = k7.post("/api/v1/jobs", _nested_job(job_factory, "shallow", 20))
        assert ok.status == 202, ok.body
        handed_over = [event for _, event in records(settings_, "job-requests")]  # decoded as every reader does
        assert [(type(e), getattr(e, "job_id", e)) for e in handed_over] == [(JobRequested, "shallow")]

        @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(value=numerals)
        def numbers_in_query_and_path(value):
            encoded = quote(value)
            listing = k7.get(f"/api/v1/jobs?limit={encoded}")
            assert (listing.status, listing.code) == (400, "invalid_parameter"), (value, listing.body)
            company = k7.get(f"/api/v1/companies/{encoded}/settings")
            assert (company.status, company.code) == (404, "company_not_found"), (value, company.body)

        numbers_in_query_and_path()
