"""The Moodle-side reference client (plain PHP, run with Debian's php-cli) against the running API: the proof
that Moodle can actually talk to us. Also checks that the PHP callback verifier accepts what we sign."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from security.signing import sign
from tests.support.api import ApiServer, api_keys, without_api_keys
from tests.support.observe import records, wait_for

pytestmark = pytest.mark.integration

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "moodle" / "example.php"
SECRET = "php-k7-secret-0123456789abcdef"


def php(*args: str) -> dict:
    php_bin = shutil.which("php")
    assert php_bin, "php-cli is not installed (apt-get install -y php-cli; .ci/run installs it)"
    done = subprocess.run([php_bin, str(CLIENT), *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_php_client_submits_reads_and_verifies_callbacks(settings_factory, topics_for, processes, job_factory,
                                                             mail_sink, tmp_path):
    settings = settings_factory(api_keys=api_keys(**{"moodle-7": (SECRET, 7)}), smtp_port=mail_sink.port)
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    processes("projector", without_api_keys(settings))
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job_factory("php-job-1", 5, callback_url="https://93.184.215.14/cb",
                                               callback_secret="never-in-the-log")))
    with ApiServer(settings) as server:
        base = server.base_url
        first = php(base, "moodle-7", SECRET, "submit", str(job_file))
        assert (first["status"], first["body"]["job_id"], first["body"]["created"]) == (202, "php-job-1", True)
        assert php(base, "moodle-7", SECRET, "submit", str(job_file))["status"] == 200
        wrong = php(base, "moodle-7", "not-the-secret-0123456789", "submit", str(job_file))
        assert (wrong["status"], wrong["body"]["error"]["code"]) == (401, "bad_signature")

        def completed():
            reply = php(base, "moodle-7", SECRET, "job", "php-job-1")
            return reply if reply["body"]["status"] == "completed" else None

        done = wait_for(completed, timeout=90, what="the job to complete, read by the PHP client")
        assert done["body"]["progress"]["sent"] == 5
        assert php(base, "moodle-7", SECRET, "failed", "php-job-1")["body"]["recipients"] == []
        assert php(base, "moodle-7", SECRET, "settings", "7")["body"]["configured"] is False
        assert php(base, "moodle-7", SECRET, "settings", "8")["status"] == 404
    assert len(records(settings, "job-requests")) == 1

    # A callback signed the way the service signs: PHP accepts it, and refuses it tampered or stale.
    body = json.dumps({"job_id": "php-job-1", "status": "completed", "sent": 5, "failed": 0})
    path = "/local/offload/callback.php?jobid=php-job-1"

    def callback(*, ts: int, sent_body: str, secret: str = SECRET) -> dict:
        nonce = "callback-nonce-0123456789"
        headers = {"X-Offload-Key-Id": "moodle-7", "X-Offload-Timestamp": str(ts), "X-Offload-Nonce": nonce,
                   "X-Offload-Signature": sign(secret, "POST", path, str(ts), nonce, body.encode())}
        spec = tmp_path / f"callback-{ts}-{len(sent_body)}.json"
        spec.write_text(json.dumps({"headers": headers, "method": "POST", "path": path, "body": sent_body,
                                    "secrets": {"moodle-7": SECRET}}))
        return php("", "", "", "verify-callback", str(spec))

    now = int(time.time())
    assert callback(ts=now, sent_body=body) == {"valid": True}
    assert callback(ts=now, sent_body=body.replace('"sent": 5', '"sent": 6')) == {"valid": False}
    assert callback(ts=now - 3600, sent_body=body) == {"valid": False}
    assert callback(ts=now, sent_body=body, secret="another-secret-0123456789") == {"valid": False}
