"""Unauthenticated work, the sign-in throttle and callback URLs, against the real app on a loopback port with the
shared Postgres: callback hosts resolve while the default thread pool is full, IPv6 clients are limited by
their /64, and a callback URL's query (Moodle's wstoken) shows redacted in the read models, the API and the UI,
for events written before the API sealed queries too (and such an old job, run by a real worker, is called back
at its full URL while its callback table holds no token).

Read-model rows come from real events applied by the projections' own code (no hand-written rows).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from api.ui.state import COOKIE, UI_STATE
from config.settings import Settings
from eventlog.publisher import EventPublisher
from schemas.events import Event, JobAccepted, JobRequested
from security.callback_urls import seal_query
from tests.integration.test_public_routes import project
from tests.support.api import SignedClient, api_keys
from tests.support.jobs import job_payload
from tests.support.moodle_receiver import MoodleReceiver
from tests.support.observe import query, records, wait_for, wait_for_job

pytestmark = pytest.mark.integration

ADMIN, ADMIN_SECRET = "ops", "ops-public-limits-secret-0123456789"
K7, K7_SECRET = "k7", "k7-public-limits-secret-0123456789ab"
TOKEN = "WSTOKEN0123456789abcdefSECRET"
MOODLE = "https://moodle.example.org/webservice/rest/server.php"


@pytest.fixture
def make_settings(settings_factory) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "api_keys": api_keys(**{ADMIN: (ADMIN_SECRET, None), K7: (K7_SECRET, 7)}),
            "ui_session_secret": SecretStr("ui-session-secret-public-limits-0123456789"),
            "api_allow_private_callbacks": False,
        }
        values.update(overrides)
        return settings_factory(**values)

    return make


async def signed(http: aiohttp.ClientSession, server: TestServer, method: str, path: str, key: str, secret: str,
                 body: Any = None) -> tuple[int, Any]:
    data = b"" if body is None else json.dumps(body).encode()
    headers = SignedClient(str(server.make_url("")), key, secret).headers(method, path, data)
    async with http.request(method, server.make_url(path), data=data, headers=headers) as r:
        return r.status, await r.json()


# --- finding 6: callback hosts are not resolved in the pool public routes fill ---------------------------------


async def test_signed_submissions_resolve_callback_hosts_while_the_default_thread_pool_is_full(make_settings,
                                                                                               serve):
    """Public routes (aiohttp's file responses of /certificates) use the loop's default executor; a flood there
    must not make a good callback host time out as ``callback_url_unresolvable``. ``localhost`` resolves (to a
    loopback address, so the answer is ``callback_url_forbidden``): the resolution itself is what is tested."""
    server = await serve(make_settings())
    loop = asyncio.get_running_loop()
    release = threading.Event()
    executor = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(executor)
    blocker = loop.run_in_executor(None, release.wait, 60)
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            status, answer = await signed(http, server, "POST", "/api/v1/jobs", K7, K7_SECRET,
                                          job_payload("dns-busy-pool", 2, callback_url="https://localhost/cb.php"))
        assert (status, answer["error"]["code"]) == (422, "callback_url_forbidden"), answer
    finally:
        release.set()
        await blocker


# --- finding 7 (and 6's rate limit): an IPv6 client is one client per /64 -------------------------------------


async def test_ipv6_clients_are_throttled_and_rate_limited_by_their_64(make_settings, serve):
    """A host given a /64 must not get a fresh sign-in budget (or request budget) from every address in it."""
    server = await serve(make_settings(public_rate_limit_per_minute=0, trusted_proxies=["127.0.0.1/32"]))
    wrong = {"key_id": ADMIN, "secret": "wrong-secret-0123456789"}
    async with aiohttp.ClientSession() as http:
        async def attempt(client: str) -> int:
            async with http.post(server.make_url("/ui/login"), data=wrong, allow_redirects=False,
                                 headers={"X-Forwarded-For": client}) as r:
                return r.status

        assert [await attempt(f"2001:db8:7:1::{i:x}") for i in range(1, 12)] == [401] * 10 + [429]
        assert await attempt("2001:db8:7:1:ffff:ffff:ffff:ffff") == 429  # still the same /64
        assert await attempt("2001:db8:7:2::1") == 401  # the next /64 is another client

    limited = await serve(make_settings(public_rate_limit_per_minute=5, trusted_proxies=["127.0.0.1/32"]))
    async with aiohttp.ClientSession() as http:
        async def verify(client: str) -> int:
            async with http.get(limited.make_url("/verify/0000-0000-0000-0000"),
                                headers={"Accept": "application/json", "X-Forwarded-For": client}) as r:
                return r.status

        assert [await verify(f"2001:db8:9:1::{i:x}") for i in range(1, 7)] == [404] * 5 + [429]
        assert await verify("2001:db8:9:2::1") == 404


# --- finding 13: a callback URL's query never shows in clear, old events included -----------------------------


def accepted(job_id: str, callback_url: str, sealed: str | None = None) -> JobAccepted:
    return JobAccepted(job_id=job_id, type="email", company_id=7, route="local", reason="test", provider="smtp",
                       template_id="course_reminder", total_recipients=2, batch_size=2, batch_count=1,
                       callback_url=callback_url, callback_query_sealed=sealed)


async def test_a_callback_token_shows_redacted_in_read_models_api_and_ui_for_old_events_too(make_settings, serve):
    settings = make_settings()
    full = f"{MOODLE}?wstoken={TOKEN}&wsfunction=local_offload_callback"
    base, sealed = seal_query(full, "cb-new", settings.callback_url_secret.get_secret_value().encode())
    # "cb-old": a JobAccepted written before the API sealed queries carries the whole URL, and stays valid.
    await project(settings, [accepted("cb-old", full), accepted("cb-new", base, sealed)])

    rows = query(settings, "SELECT job_id, callback_url FROM jobs ORDER BY job_id")
    assert {r["job_id"]: r["callback_url"] for r in rows} == {
        "cb-new": f"{MOODLE}?[redacted]",
        "cb-old": f"{MOODLE}?wstoken=[redacted]&wsfunction=[redacted]",
    }
    audit = query(settings, "SELECT detail::text AS detail FROM audit_log WHERE subject LIKE %s", ("cb-%",))
    assert len(audit) == 2 and all(TOKEN not in r["detail"] and sealed not in r["detail"] for r in audit), audit

    server = await serve(settings)
    async with aiohttp.ClientSession() as http:
        status, job = await signed(http, server, "GET", "/api/v1/jobs/cb-old", K7, K7_SECRET)
        assert (status, job["callback_url"]) == (200, f"{MOODLE}?wstoken=[redacted]&wsfunction=[redacted]")
        status, job = await signed(http, server, "GET", "/api/v1/jobs/cb-new", K7, K7_SECRET)
        assert (status, job["callback_url"]) == (200, f"{MOODLE}?[redacted]")
    cookie = {COOKIE: server.app[UI_STATE].sessions.issue(ADMIN, ADMIN_SECRET)}
    async with aiohttp.ClientSession(cookies=cookie) as http:
        for job_id in ("cb-old", "cb-new"):
            async with http.get(server.make_url(f"/ui/jobs/{job_id}")) as r:
                page = await r.text()
            assert r.status == 200 and "[redacted]" in page and TOKEN not in page, job_id
            assert sealed not in page


async def _publish(settings: Settings, event: Event) -> None:
    publisher = EventPublisher(settings, source="urn:test:old-producer")
    await publisher.start()
    try:
        await publisher.send_and_wait(event)
    finally:
        await publisher.stop()


def test_an_old_job_request_with_a_token_in_its_callback_url_is_called_back_but_not_kept_in_clear(
        settings_factory, topics_for, processes, mail_sink):
    """A JobRequested written before the API sealed queries (the whole URL, no sealed part) is still valid: Moodle
    is called at the full URL; the worker's callback table (its changelog topic) and the read models hold no
    token. The job topics keep the old events as they were written: the log is not rewritten."""
    cb_key, cb_secret = "moodle-7-cb", "callback-k7-secret-0123456789abcdef"
    settings = settings_factory(smtp_port=mail_sink.port, api_allow_private_callbacks=True,
                                callback_check_interval=0.2,
                                callback_keys=json.dumps({cb_key: {"secret": cb_secret, "company_id": 7}}))
    topics_for(settings)
    with MoodleReceiver({cb_key: cb_secret}) as moodle:
        processes("worker", settings)
        processes("projector", settings)
        url = moodle.url(f"/webservice/rest/server.php?wstoken={TOKEN}&wsfunction=local_offload_callback")
        old = JobRequested.model_validate(job_payload("old-cb", 3, callback_url=url))
        assert old.callback_query_sealed is None
        asyncio.run(_publish(settings, old))
        wait_for(lambda: [r for r in moodle.delivered() if r.json["event"] == "completed"] or None, timeout=120,
                 what="the completed callback")
        wait_for_job(settings, "old-cb")
    assert moodle.received and all(r.valid and f"wstoken={TOKEN}" in r.path for r in moodle.received)
    changelog = settings.model_copy(update={"topic_prefix": ""})
    entries = records(changelog, f"{settings.app_id}-callbacks-changelog")
    assert entries and all(TOKEN.encode() not in (record.value or b"") for record, _ in entries)
    (row,) = query(settings, "SELECT callback_url FROM jobs WHERE job_id = %s", ("old-cb",))
    assert row["callback_url"].endswith("/webservice/rest/server.php?wstoken=[redacted]&wsfunction=[redacted]")
    audit = query(settings, "SELECT detail::text AS detail FROM audit_log WHERE subject = %s", ("old-cb",))
    assert audit and all(TOKEN not in r["detail"] for r in audit)
