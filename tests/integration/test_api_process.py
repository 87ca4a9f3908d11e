"""``python -m api`` as its own process, configured only from the environment (keys as JSON in
OFFLOAD_API_KEYS): it serves signed requests, stops cleanly on SIGTERM, and never logs a secret."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support.api import PUBLIC_CALLBACK, SignedClient, send
from tests.support.observe import records
from tests.support.stack import REPO, settings_env

pytestmark = pytest.mark.integration

SECRET = "process-k7-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_api_process_serves_signed_requests_and_keeps_secrets_out_of_its_log(settings_factory, topics_for,
                                                                                 job_factory, tmp_path):
    settings = settings_factory()
    topics_for(settings)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    env.update(settings_env(settings))
    env["OFFLOAD_API_KEYS"] = json.dumps({"k7": {"secret": SECRET, "company_id": 7}})
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "api", "--port", str(port), "-l", "debug"], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if send(base, "GET", "/api/v1/health", b"", {}).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the API did not answer within 60 s"
            time.sleep(0.2)
        client = SignedClient(base, "k7", SECRET)
        job = job_factory("process-job", 3, callback_url=PUBLIC_CALLBACK, callback_secret="callback-secret-xyz")
        assert client.post("/api/v1/jobs", job).status == 202
        assert client.get("/api/v1/jobs/process-job").body["status"] == "submitted"
        forged = SignedClient(base, "k7", "a-guessed-secret-0123456789")
        assert forged.post("/api/v1/jobs", job).code == "bad_signature"
        assert SignedClient(base, "k9", SECRET).get("/api/v1/jobs").code == "unknown_key"
        openapi = send(base, "GET", "/api/v1/openapi.yaml", b"", {})
        assert openapi.status == 200 and openapi.raw.startswith(b"openapi: 3.1.0")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    text = log_path.read_text()
    assert "refused POST /api/v1/jobs: bad_signature (key id 'k7')" in text
    assert "job process-job of company 7 from key k7: handed over" in text
    for secret in (SECRET, "callback-secret-xyz", "a-guessed-secret-0123456789"):
        assert secret not in text
    assert len(records(settings, "job-requests")) == 1
