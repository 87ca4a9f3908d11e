"""The callback sender: signatures Moodle accepts (the API's verifier and the PHP client's), the backoff
schedule, key choice, and no SSRF — with real aiohttp servers on loopback, nothing mocked."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import SecretStr

from adapters.callbacks import (
    CALLBACK_ID_HEADER,
    CallbackSender,
    ForbiddenAddress,
    PublicOnlyResolver,
    callback_body,
    moodle_dependency,
    signed_headers,
)
from config.settings import ApiKey, Settings
from resilience.backoff import backoff
from security.signing import RequestVerifier
from tests.support.production import PRODUCTION_SECRETS

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "moodle" / "example.php"
KEY_ID, SECRET = "moodle-7-cb", "callback-k7-secret-0123456789abcdef"
URL = "https://moodle.example.org/local/offload/callback.php?jobid=j%2F1&x=1"
BODY = callback_body(callback_id="j:0:completed", job_id="j", company_id=7, event="completed", status="completed",
                     run=0, total=10, succeeded=9, failed=1, milestone=None, at=datetime(2026, 1, 1, tzinfo=UTC))


def settings(**overrides) -> Settings:
    values = {"environment": "test",
              "callback_keys": json.dumps({KEY_ID: {"secret": SECRET, "company_id": 7}})}
    return Settings(**{**values, **overrides})


# --- signing ------------------------------------------------------------------------------------------------


def test_the_api_verifier_accepts_a_callback_signature_over_the_raw_path_and_query():
    headers = signed_headers(URL, BODY, KEY_ID, SECRET, now=1_800_000_000, nonce="nonce-0123456789AB")
    verifier = RequestVerifier({KEY_ID: ApiKey(secret=SecretStr(SECRET), company_id=7)}, window=300,
                               clock=lambda: 1_800_000_000)
    checked = verifier.check_headers(headers)
    path = "/local/offload/callback.php?jobid=j%2F1&x=1"  # as sent on the request line, still percent-encoded
    assert verifier.verify(checked, "POST", path, BODY).company_id == 7
    fresh = verifier.check_headers(headers)
    with pytest.raises(Exception, match="signature"):
        RequestVerifier({KEY_ID: ApiKey(secret=SecretStr(SECRET), company_id=7)}, window=300, clock=lambda: 1_800_000_000) \
            .verify(fresh, "POST", path, BODY.replace(b'"failed":1', b'"failed":2'))


def test_every_attempt_gets_a_fresh_nonce():
    first, second = (signed_headers(URL, BODY, KEY_ID, SECRET) for _ in range(2))
    assert first["X-Offload-Nonce"] != second["X-Offload-Nonce"]
    assert first["X-Offload-Signature"] != second["X-Offload-Signature"]


def test_the_php_client_verifies_what_the_sender_signs(tmp_path):
    php_bin = shutil.which("php")
    assert php_bin, "php-cli is not installed (apt-get install -y php-cli; .ci/run installs it)"

    def verify(headers: dict[str, str], body: bytes) -> bool:
        spec = tmp_path / "callback.json"
        spec.write_text(json.dumps({"headers": headers, "method": "POST", "path": "/local/offload/callback.php"
                                    "?jobid=j%2F1&x=1", "body": body.decode(), "secrets": {KEY_ID: SECRET}}))
        done = subprocess.run([php_bin, str(CLIENT), "", "", "", "verify-callback", str(spec)],
                              capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)["valid"]

    headers = signed_headers(URL, BODY, KEY_ID, SECRET)
    assert verify(headers, BODY)
    assert not verify(headers, BODY.replace(b'"succeeded":9', b'"succeeded":10'))
    assert not verify(signed_headers(URL, BODY, KEY_ID, "another-secret-0123456789abcdef"), BODY)
    assert not verify(signed_headers(URL, BODY, KEY_ID, SECRET, now=1_000_000_000), BODY)  # stale


def test_the_body_says_what_happened_without_secrets_or_learners():
    body = json.loads(BODY)
    assert body == {"callback_id": "j:0:completed", "job_id": "j", "company_id": 7, "event": "completed",
                    "status": "completed", "run": 0, "milestone": None,
                    "totals": {"total": 10, "succeeded": 9, "failed": 1, "suppressed": 0, "pending": 0},
                    "percent": 100,
                    "timestamp": "2026-01-01T00:00:00+00:00"}
    progress = json.loads(callback_body(callback_id="j:0:progress-50", job_id="j", company_id=7, event="progress",
                                        status="running", run=0, total=200, succeeded=101, failed=2, milestone=50,
                                        at=datetime(2026, 1, 1, tzinfo=UTC)))
    assert (progress["percent"], progress["totals"]["pending"]) == (51, 97)
    # Learners on the suppression list are done too (not sent, not failed): a finished job has nobody pending.
    held = json.loads(callback_body(callback_id="j:0:completed", job_id="j", company_id=7, event="completed",
                                    status="completed", run=0, total=10, succeeded=7, failed=1, suppressed=2,
                                    milestone=None, at=datetime(2026, 1, 1, tzinfo=UTC)))
    assert held["totals"] == {"total": 10, "succeeded": 7, "failed": 1, "suppressed": 2, "pending": 0}


# --- keys -----------------------------------------------------------------------------------------------------


def test_a_company_s_callbacks_are_signed_with_its_own_key_and_the_newest_of_a_rotation():
    keys = {"old-7": {"secret": "x" * 20, "company_id": 7}, "new-7": {"secret": "y" * 20, "company_id": 7},
            "k8": {"secret": "z" * 20, "company_id": 8}, "shared": {"secret": "s" * 20, "company_id": None}}
    s = Settings(environment="test", callback_keys=json.dumps(keys))
    assert s.callback_key_for(7)[0] == "new-7"
    assert s.callback_key_for(7, "old-7")[0] == "old-7"  # the job named it
    assert s.callback_key_for(7, "k8")[0] == "new-7"  # another company's key is never used
    assert s.callback_key_for(9)[0] == "shared"
    assert Settings(environment="test").callback_key_for(7) is None
    assert "y" * 20 not in repr(s) and "y" * 20 not in str(s.model_dump())


@pytest.mark.parametrize("raw", ["not json", "[]", '{"k": {"secret": "short"}}', '{"bad id!": {"secret": "'
                                 + "x" * 20 + '"}}'])
def test_bad_callback_keys_are_refused_at_start_up(raw):
    with pytest.raises(ValueError, match="callback"):
        Settings(environment="test", callback_keys=raw)


def test_production_refuses_short_callback_secrets():
    with pytest.raises(ValueError, match="at least 32"):
        Settings(environment="production", **PRODUCTION_SECRETS,
                 callback_keys=json.dumps({"k": {"secret": "x" * 20, "company_id": 1}}))


# --- backoff --------------------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter():
    rng = random.Random(7)
    for attempt in range(1, 30):
        ceiling = min(3600.0, 15.0 * 2 ** (attempt - 1))
        for _ in range(50):
            delay = backoff(attempt, base=15.0, cap=3600.0, jitter="equal", rng=rng)
            assert ceiling / 2 <= delay <= ceiling
    assert backoff(10_000, base=15.0, cap=3600.0, jitter="equal") <= 3600.0  # no overflow for absurd attempt counts


def test_the_default_schedule_keeps_trying_for_a_day_without_hammering():
    s = Settings(environment="test")
    rng = random.Random(1)
    elapsed, attempts = 0.0, 1
    while True:
        delay = backoff(attempts, base=s.callback_retry_base, cap=s.callback_retry_max, jitter="equal", rng=rng)
        if elapsed + delay > s.callback_max_age:
            break
        elapsed += delay
        attempts += 1
    # Half-jittered hourly retries after the first ~2 h: roughly 30-50 attempts in 24 h, the last near the end.
    assert 25 <= attempts <= 60
    assert elapsed > s.callback_max_age - s.callback_retry_max


# --- sending and SSRF ---------------------------------------------------------------------------------------


@pytest.fixture
async def moodle() -> AsyncIterator[tuple[str, list[web.Request], list[bytes]]]:
    """A real callback endpoint on loopback that records what reaches it."""
    requests: list[web.Request] = []
    bodies: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        requests.append(request)
        bodies.append(await request.read())
        if request.path == "/redirect":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", requests, bodies
    finally:
        await runner.cleanup()


async def test_a_callback_to_loopback_is_refused_unless_allowed(moodle):
    base, requests, bodies = moodle
    sender = CallbackSender(settings())
    try:
        for url in (f"{base}/cb", f"http://localhost:{base.rsplit(':', 1)[1]}/cb", "http://[::1]/cb",
                    "http://10.0.0.8/cb", "http://169.254.169.254/latest/meta-data/", "ftp://example.org/cb"):
            attempt = await sender.send(url, BODY, key_id=KEY_ID, secret=SECRET, callback_id="j:0:completed")
            assert not attempt.delivered and attempt.permanent, url
            assert attempt.status is None
        assert requests == []
    finally:
        await sender.stop()

    allowed = CallbackSender(settings(api_allow_private_callbacks=True))
    try:
        attempt = await allowed.send(f"{base}/cb?jobid=j", BODY, key_id=KEY_ID, secret=SECRET,
                                     callback_id="j:0:completed")
    finally:
        await allowed.stop()
    assert attempt.delivered and attempt.status == 200
    (request,) = requests
    assert bodies == [BODY] and request.headers[CALLBACK_ID_HEADER] == "j:0:completed"
    verifier = RequestVerifier({KEY_ID: ApiKey(secret=SecretStr(SECRET), company_id=7)}, window=300)
    assert verifier.verify(verifier.check_headers(request.headers), "POST", request.raw_path, BODY)


async def test_the_resolver_refuses_a_name_that_resolves_inside_at_connect_time():
    # What a DNS rebinding would do: a name checked as public earlier now resolves to loopback.
    resolver = PublicOnlyResolver()
    try:
        with pytest.raises(ForbiddenAddress):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


async def test_redirects_are_not_followed(moodle):
    base, requests, _ = moodle
    sender = CallbackSender(settings(api_allow_private_callbacks=True))
    try:
        attempt = await sender.send(f"{base}/redirect", BODY, key_id=KEY_ID, secret=SECRET, callback_id="j:0:x")
    finally:
        await sender.stop()
    assert (attempt.delivered, attempt.status, attempt.permanent) == (False, 302, False)
    assert len(requests) == 1


async def test_an_unreachable_moodle_is_a_retryable_failure():
    sender = CallbackSender(settings(api_allow_private_callbacks=True, callback_connect_timeout=2))
    try:
        attempt = await sender.send("http://127.0.0.1:9/cb", BODY, key_id=KEY_ID, secret=SECRET, callback_id="j")
    finally:
        await sender.stop()
    assert not attempt.delivered and not attempt.permanent and attempt.status is None and attempt.error


def test_a_moodle_host_is_named_in_health_without_user_info_path_or_query():
    assert moodle_dependency("https://alice:pw@moodle.example.org/local/cb.php?token=s3cret") == \
        "moodle moodle.example.org"
    assert moodle_dependency("http://127.0.0.1:8443/cb?jobid=7") == "moodle 127.0.0.1:8443"
