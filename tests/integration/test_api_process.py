"""``python -m api`` as its own process, configured only from the environment (keys as JSON in
OFFLOAD_API_KEYS): it serves signed requests, stops cleanly on SIGTERM, and never logs a secret."""

from __future__ import annotations

import json

import pytest

from tests.support.api import PUBLIC_CALLBACK, ApiProcess, SignedClient, send
from tests.support.observe import records

pytestmark = pytest.mark.integration

SECRET = "process-k7-secret-0123456789"


def test_the_api_process_serves_signed_requests_and_keeps_secrets_out_of_its_log(settings_factory, topics_for,
                                                                                 job_factory, tmp_path):
    settings = settings_factory()
    topics_for(settings)
    keys = {"OFFLOAD_API_KEYS": json.dumps({"k7": {"secret": SECRET, "company_id": 7}})}
    log_path = tmp_path / "api.log"
    with ApiProcess(settings, log_path, keys, ("-l", "debug")) as api:
        base = api.base_url
        client = SignedClient(base, "k7", SECRET)
        job = job_factory("process-job", 3, callback_url=PUBLIC_CALLBACK, callback_secret="callback-secret-xyz")
        assert client.post("/api/v1/jobs", job).status == 202
        assert client.get("/api/v1/jobs/process-job").body["status"] == "submitted"
        forged = SignedClient(base, "k7", "a-guessed-secret-0123456789")
        assert forged.post("/api/v1/jobs", job).code == "bad_signature"
        assert SignedClient(base, "k9", SECRET).get("/api/v1/jobs").code == "unknown_key"
        openapi = send(base, "GET", "/api/v1/openapi.yaml", b"", {})
        assert openapi.status == 200 and openapi.raw.startswith(b"openapi: 3.1.0")
    assert api.returncode == 0  # stopped cleanly by SIGTERM
    text = log_path.read_text()
    assert "refused POST /api/v1/jobs: bad_signature (key id 'k7')" in text
    assert "job process-job of company 7 from key k7: handed over" in text
    for secret in (SECRET, "callback-secret-xyz", "a-guessed-secret-0123456789"):
        assert secret not in text
    assert len(records(settings, "job-requests")) == 1
