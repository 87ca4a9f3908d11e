"""The unauthenticated side of the API and the admin UI under abuse, against the real app on a loopback port
with the shared Postgres and Kafka: certificate verification from the read model through the async pool, the
sign-in throttle and its body limit, the public rate limit, /metrics' token, malformed cookies, and one poll
loop per watched job however many pages watch it.

Read-model rows come from real events applied by the projections' own code (no hand-written rows).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from api.metrics import COLLECTOR
from api.state import STATE
from api.ui.state import COOKIE, UI_STATE
from config.settings import Settings
from projections.base import Position
from projections.read_models import READ_MODELS, open_read_models
from schemas.events import CertificateIssued, Event, JobAccepted, RecipientSent
from tests.support.api import api_keys
from tests.support.production import PRODUCTION_SECRETS

pytestmark = pytest.mark.integration

ADMIN, ADMIN_SECRET = "ops", "ops-public-routes-secret-0123456789"
CODE = "ABCD-EFGH-JKMN-PQRS"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def project(settings: Settings, events: Sequence[Event]) -> None:
    """Apply events to the test's read models exactly as the projector does (same modules, same SQL)."""
    conn = await open_read_models(settings)
    try:
        applied = [(Position("test", 0, i, datetime.now(UTC)), e) for i, e in enumerate(events)]
        async with conn.transaction(), conn.cursor() as cur:
            for model in READ_MODELS:
                await model.apply(cur, applied)
    finally:
        await conn.close()


def certificate(job_id: str = "certs-public", userid: int = 1, **extra: Any) -> CertificateIssued:
    return CertificateIssued(job_id=job_id, batch_no=0, userid=userid, email=f"l{userid}@example.org",
                             url=f"https://files.example.org/{userid}.pdf",
                             object_key=f"company-7/{job_id}/{userid}.pdf",
                             sha256="0" * 64, size=1234, code=CODE, template_id="course_completion",
                             template_version=1, backend="s3", **extra)


@pytest.fixture
def make_settings(settings_factory) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "api_keys": api_keys(**{ADMIN: (ADMIN_SECRET, None)}),
            "ui_session_secret": SecretStr("ui-session-secret-public-routes-0123456789"),
        }
        values.update(overrides)
        return settings_factory(**values)

    return make


def signed_in_cookie(server: TestServer) -> dict[str, str]:
    sessions = server.app[UI_STATE].sessions
    return {COOKIE: sessions.issue(ADMIN, ADMIN_SECRET)}


# --- certificate verification ----------------------------------------------------------------------------


async def test_verify_reads_holder_course_and_date_from_the_read_model_not_the_pdf(make_settings, serve):
    """No PDF exists anywhere for this certificate: the answer comes from what CertificateIssued recorded."""
    settings = make_settings()
    await project(settings, [certificate(holder_name="Анна Кузнецова", course_name="Fire Safety 101",
                                         completion_date=date(2026, 11, 20))])
    server = await serve(settings)
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url(f"/verify/{CODE.lower()}"), headers={"Accept": "application/json"}) as r:
            assert r.status == 200
            assert await r.json() == {"valid": True, "code": CODE, "holder": "Анна Кузнецова",
                                      "course": "Fire Safety 101", "completion_date": "2026-11-20"}
        async with http.get(server.make_url(f"/verify/{CODE}")) as r:
            page = await r.text()
            assert r.status == 200 and "Анна Кузнецова" in page and "2026-11-20" in page
        async with http.get(server.make_url("/verify/0000-0000-0000-0000"),
                            headers={"Accept": "application/json"}) as r:
            assert (r.status, await r.json()) == (404, {"valid": False})


async def test_verify_answers_while_the_default_thread_pool_is_busy(make_settings, serve):
    """A flood that fills the default executor (which callback DNS checks use) must not stall /verify, and
    /verify must not add to it: it reads through the API's async pool."""
    settings = make_settings()
    await project(settings, [certificate(holder_name="Amélie Dubois", course_name="Fire Safety 101",
                                         completion_date=date(2026, 11, 20))])
    server = await serve(settings)
    loop = asyncio.get_running_loop()
    release = threading.Event()
    executor = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(executor)
    blocker = loop.run_in_executor(None, release.wait, 60)
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(10):
                async with http.get(server.make_url(f"/verify/{CODE}"),
                                    headers={"Accept": "application/json"}) as r:
                    assert r.status == 200 and (await r.json())["holder"] == "Amélie Dubois"
    finally:
        release.set()
        await blocker


# --- sign-in: body limit, atomic throttle, proxies ----------------------------------------------------------


async def _raw(server: TestServer, head: bytes, body: bytes | None = None, *, after: asyncio.Event | None = None,
               timeout: float = 30) -> int:
    """Send a request by hand; the body (if any) only once ``after`` is set. Returns the status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head)
        await writer.drain()
        status_line = asyncio.ensure_future(reader.readline())
        if body is not None:
            waiting = asyncio.ensure_future(after.wait()) if after is not None else None
            if waiting is not None:
                await asyncio.wait({status_line, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
            if not status_line.done():
                writer.write(body)
                await writer.drain()
        async with asyncio.timeout(timeout):
            line = await status_line
        return int(line.split()[1])
    finally:
        writer.close()


def _login_head(length: int, extra: str = "") -> bytes:
    return (f"POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


async def test_sign_in_refuses_a_large_form_before_reading_it(make_settings, serve):
    server = await serve(make_settings())
    # Only the headers are sent: the answer must come without waiting for 10 MB that never arrive.
    assert await _raw(server, _login_head(10 * 1024 * 1024), timeout=10) == 413


async def test_parallel_slow_sign_ins_from_one_address_are_throttled(make_settings, serve):
    """200 attempts whose bodies arrive late: at most 10 may be checked, the rest are refused unread."""
    server = await serve(make_settings(public_rate_limit_per_minute=0))
    body = b"key_id=ops&secret=wrong-secret-0123456789&next=%2Fui%2Fjobs"
    bodies_go = asyncio.Event()
    attempts = [asyncio.ensure_future(_raw(server, _login_head(len(body)), body, after=bodies_go))
                for _ in range(200)]
    # Every attempt is on the wire before any body is: the throttle must count attempts, not finished checks.
    await asyncio.sleep(0.5)
    bodies_go.set()
    statuses = Counter(await asyncio.gather(*attempts))
    assert statuses[401] <= 10 and statuses[429] >= 190 and sum(statuses.values()) == 200, statuses


async def test_behind_a_trusted_proxy_each_client_is_throttled_on_its_own(make_settings, serve):
    server = await serve(make_settings(public_rate_limit_per_minute=0, trusted_proxies=["127.0.0.1/32"]))
    wrong = {"key_id": ADMIN, "secret": "wrong-secret-0123456789"}
    async with aiohttp.ClientSession() as http:
        async def attempt(client: str) -> int:
            async with http.post(server.make_url("/ui/login"), data=wrong, allow_redirects=False,
                                 headers={"X-Forwarded-For": f"203.0.113.99, {client}"}) as r:
                return r.status

        assert [await attempt("198.51.100.1") for _ in range(11)] == [401] * 10 + [429]
        assert await attempt("198.51.100.2") == 401  # another admin behind the same proxy is not locked out
        # A good sign-in from the throttled client's neighbour works; the left-hand hop is never believed.
        async with http.post(server.make_url("/ui/login"), data={"key_id": ADMIN, "secret": ADMIN_SECRET},
                             allow_redirects=False, headers={"X-Forwarded-For": "198.51.100.1, 198.51.100.3"}) as r:
            assert r.status == 303


async def test_without_trusted_proxies_x_forwarded_for_is_ignored(make_settings, serve):
    server = await serve(make_settings(public_rate_limit_per_minute=0))
    wrong = {"key_id": ADMIN, "secret": "wrong-secret-0123456789"}
    async with aiohttp.ClientSession() as http:
        statuses = []
        for i in range(11):  # a client that invents a new address each time is still one client
            async with http.post(server.make_url("/ui/login"), data=wrong, allow_redirects=False,
                                 headers={"X-Forwarded-For": f"198.51.100.{i}"}) as r:
                statuses.append(r.status)
    assert statuses == [401] * 10 + [429]


# --- rate limit and /metrics token -----------------------------------------------------------------------


async def test_public_routes_are_rate_limited_per_client(make_settings, serve):
    server = await serve(make_settings(public_rate_limit_per_minute=5, trusted_proxies=["127.0.0.1"]))
    async with aiohttp.ClientSession() as http:
        async def verify(client: str) -> tuple[int, Any, str | None]:
            async with http.get(server.make_url("/verify/0000-0000-0000-0000"),
                                headers={"Accept": "application/json", "X-Forwarded-For": client}) as r:
                return r.status, await r.json(), r.headers.get("Retry-After")

        answers = [await verify("198.51.100.7") for _ in range(6)]
        assert [a[0] for a in answers] == [404] * 5 + [429]
        assert answers[-1][1]["error"]["code"] == "rate_limited" and int(answers[-1][2]) >= 1
        assert (await verify("198.51.100.8"))[0] == 404  # another client is not affected


async def test_metrics_need_a_bearer_token_in_production_by_default(make_settings, serve):
    settings = make_settings(environment="production", **PRODUCTION_SECRETS,
                             metrics_token=SecretStr("scrape-token-0123456789"))
    assert settings.metrics_token_required
    server = await serve(settings)
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/metrics")) as r:
            assert r.status == 401
        async with http.get(server.make_url("/metrics"),
                            headers={"Authorization": "Bearer scrape-token-0123456789"}) as r:
            assert r.status == 200 and 'offload_metrics_source_up{source="postgres"} 1.0' in await r.text()
    # Required but no token configured: nobody gets the metrics (fail closed), in production by default.
    closed = await serve(make_settings(environment="production", **PRODUCTION_SECRETS))
    async with aiohttp.ClientSession() as http, http.get(closed.make_url("/metrics")) as r:
        assert r.status == 401


async def test_metrics_read_postgres_at_most_once_a_second_however_often_scraped(make_settings, serve):
    server = await serve(make_settings())
    collector = server.app[COLLECTOR]
    async with aiohttp.ClientSession() as http:
        texts = await asyncio.gather(*(http.get(server.make_url("/metrics")) for _ in range(20)))
        assert all(r.status == 200 for r in texts)
        for r in texts:
            r.release()
    assert collector.reads == 1


# --- malformed cookies and CSRF tokens ----------------------------------------------------------------


async def test_non_ascii_session_cookie_or_csrf_token_is_a_400_with_a_code(make_settings, serve):
    server = await serve(make_settings())
    # A real session's payload with a MAC in other characters: it reaches the MAC comparison.
    payload = signed_in_cookie(server)[COOKIE].split(".")[0]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /ui/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {COOKIE}={payload}.é²\r\n"
                 "Connection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400" and json.loads(body)["error"]["code"] == "invalid_cookie", answer
    async with aiohttp.ClientSession() as http:
        cookie = "; ".join(f"{k}={v}" for k, v in signed_in_cookie(server).items())
        async with http.post(server.make_url("/ui/logout"), data=b"csrf_token=%C3%A9%C2%B2",
                             allow_redirects=False, headers={**FORM, "Cookie": cookie}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_csrf_token"


# --- live job page: one poll loop per job ---------------------------------------------------------------


async def _progress_events(response: aiohttp.ClientResponse, until: Callable[[dict], bool]) -> dict:
    event = None
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "progress":
            data = json.loads(line[6:])
            if until(data):
                return data
    raise AssertionError("the stream ended")


async def test_many_open_streams_of_one_job_share_one_poll_loop(make_settings, serve):
    settings = make_settings()
    job_id, streams = "live-shared", 8
    await project(settings, [JobAccepted(job_id=job_id, type="email", company_id=7, route="local", reason="test",
                                         provider="smtp", template_id="course_reminder", total_recipients=10,
                                         batch_size=10, batch_count=1)])
    server = await serve(settings)
    store = server.app[STATE].store
    job_reads = 0
    real_job_with_errors = store.job_with_errors

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal job_reads
        job_reads += 1
        return await real_job_with_errors(*args, **kwargs)

    store.job_with_errors = counted  # type: ignore[method-assign] - counts calls, the read itself is real
    feeds = server.app[UI_STATE].feeds
    async with aiohttp.ClientSession(cookies=signed_in_cookie(server)) as http:
        responses = [await http.get(server.make_url(f"/ui/jobs/{job_id}/stream")) for _ in range(streams)]
        try:
            firsts = await asyncio.gather(*(_progress_events(r, lambda d: True) for r in responses))
            assert all(f["sent"] == 0 and f["total"] == 10 for f in firsts)
            # A change reaches every open stream...
            await project(settings, [RecipientSent(job_id=job_id, batch_no=0, userid=u, email=f"l{u}@example.org",
                                                   provider="smtp", message_id=f"<{u}@x>", attempts=1)
                                     for u in (1, 2, 3)])
            async with asyncio.timeout(30):
                updates = await asyncio.gather(*(_progress_events(r, lambda d: d["sent"] == 3) for r in responses))
            assert all(u["sent"] == 3 for u in updates)
            # ...from one poll loop: every read of the job was that loop's, none per stream.
            feed = feeds.feeds[job_id]
            assert feeds.loops_started == 1 and len(feeds.feeds) == 1
            assert job_reads == feed.polls
        finally:
            for r in responses:
                r.close()
    # When the last page goes, the loop stops.
    async with asyncio.timeout(10):
        while job_id in feeds.feeds:
            await asyncio.sleep(0.05)
