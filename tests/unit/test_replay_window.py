"""Issue 11 findings 2 and 10, the parts that need no database: the replay window is judged again, with the same
clock, after the shared store has answered (signed requests and webhooks alike), and a webhook body is read whole
within a deadline. Each test here fails on the code before that change.

The stores below are the in-memory contract (``MemorySeen``) with one twist each, standing for what a shared
store does in production: it answers late (a pooled connection was waited for), and another replica may prune a
row the moment it expires by its own clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from api import webhooks
from api.errors import MAX_BODY, RETRY_AFTER, json_errors
from api.store import ReadStore
from config.settings import ApiKey, Settings
from eventlog.publisher import EventPublisher
from security.seen import MemorySeen
from security.signing import AuthError, RequestVerifier, sign
from tests.unit.test_webhooks import TOPIC, make_certificate, sns_message

SECRET = "k7-secret-0123456789abcdef"
WINDOW = 300
TS = 1_800_000_000
MAILGUN_KEY = "mailgun-signing-key-0123456789"


class LateStore(MemorySeen):
    """Answers ``delay`` seconds of the shared clock after it was asked, and forgets rows as a replica that
    prunes at that moment would (anything expired by then, no grace): the worst a slow store can do."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock
        self.delay = 0.0

    async def first_time(self, scope: str, token: str, *, expires_at: float, now: float) -> bool:
        self.clock[0] += self.delay
        return await super().first_time(scope, token, expires_at=expires_at, now=max(now, self.clock[0]))


def _replica(clock: list[float], store: MemorySeen) -> RequestVerifier:
    return RequestVerifier({"k7": ApiKey(secret=SecretStr(SECRET), company_id=7)}, window=WINDOW,
                           clock=lambda: clock[0], seen=store)


def _request(v: RequestVerifier, clock: list[float], *, headers_at: float, body_at: float,
             nonce: str = "nonce-0123456789AB") -> str:
    """One signed request (timestamp TS) whose headers arrive at ``headers_at`` and body by ``body_at``."""
    clock[0] = headers_at
    headers = {"X-Offload-Key-Id": "k7", "X-Offload-Timestamp": str(TS), "X-Offload-Nonce": nonce,
               "X-Offload-Signature": sign(SECRET, "POST", "/api/v1/jobs", str(TS), nonce, b"{}")}
    try:
        signed = v.check_headers(headers)
        clock[0] = body_at
        asyncio.run(v.admit(signed, "POST", "/api/v1/jobs", b"{}"))
    except AuthError as exc:
        return exc.code
    return "ok"


def test_a_request_is_refused_when_the_window_closes_while_the_replay_store_answers():
    clock = [float(TS)]
    store = LateStore(clock)
    store.delay = 3.0
    v = _replica(clock, store)
    assert _request(v, clock, headers_at=TS + WINDOW - 2, body_at=TS + WINDOW - 1) == "stale_timestamp"
    assert clock[0] == TS + WINDOW + 2  # the store answered after the edge


def test_a_replay_to_another_replica_is_refused_even_if_the_store_forgot_the_original_meanwhile():
    """The original (remembered until TS + window) is admitted by replica A; replica B gets the replay just
    inside the window, but its store round trip ends past the edge, when a pruning replica has dropped the row."""
    clock = [float(TS)]
    store = LateStore(clock)
    a, b = _replica(clock, store), _replica(clock, store)
    assert _request(a, clock, headers_at=TS, body_at=TS) == "ok"
    store.delay = 1.5
    assert _request(b, clock, headers_at=TS + WINDOW - 1, body_at=TS + WINDOW - 0.5) != "ok"


moments = st.floats(min_value=-1.5 * WINDOW, max_value=1.5 * WINDOW, allow_nan=False)
waits = st.floats(min_value=0, max_value=WINDOW, allow_nan=False) | st.sampled_from([0.0, 0.5, 1.0, 2.0])


@settings(max_examples=500, deadline=None)
@given(headers=moments, body_wait=waits, store_wait=waits, replay_after=st.floats(min_value=0, max_value=2 * WINDOW),
       replay_body_wait=waits, replay_store_wait=waits)
def test_property_admitted_only_while_the_window_is_open_at_every_check_and_never_twice(
        headers, body_wait, store_wait, replay_after, replay_body_wait, replay_store_wait):
    """Whatever the body and the store take, a request is admitted only if the window is open when its headers
    arrive, when its body has arrived and when the store has answered; and once admitted, the same signed
    request is never admitted again by any replica, even by one whose store forgets at the first moment it may."""
    clock = [0.0]
    store = LateStore(clock)
    a, b = _replica(clock, store), _replica(clock, store)
    store.delay = store_wait
    h1, b1 = TS + headers, TS + headers + body_wait
    first = _request(a, clock, headers_at=h1, body_at=b1)
    answered = clock[0]
    inside = all(abs(t - TS) <= WINDOW for t in (h1, b1, answered))
    assert (first == "ok") == inside, (first, h1, b1, answered)
    store.delay = replay_store_wait
    h2 = answered + replay_after
    for replica in (a, b):  # a: the same process (its own cache too); b: another replica, the store alone
        assert _request(replica, clock, headers_at=h2, body_at=h2 + replay_body_wait) != "ok" or not inside


# --- webhooks: the same clock before and after the store; the body whole, in time ------------------------------


async def _webhook_app(settings_: Settings, **setup: object) -> tuple[web.AppRunner, int]:
    app = web.Application(middlewares=[json_errors])
    app[MAX_BODY], app[RETRY_AFTER] = settings_.api_max_body_bytes, 5
    # Nothing here reaches Kafka or Postgres: the reports these tests send match no recipient lookup.
    webhooks.setup(app, settings_, EventPublisher(settings_, source="urn:test"), ReadStore(settings_),
                   seen=MemorySeen(), **setup)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def _exchange(port: int, head: bytes, parts: list[bytes | float], timeout: float = 20) -> bytes:
    """Write a request by hand, pausing where ``parts`` holds a number of seconds; read the answer (status line,
    headers and its Content-Length of body: aiohttp may linger a while before it closes the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for part in parts:
            if isinstance(part, float):
                await writer.drain()
                await asyncio.sleep(part)
            else:
                writer.write(part)
        await writer.drain()

        async def answer() -> bytes:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            return head + await reader.readexactly(length)

        return await asyncio.wait_for(answer(), timeout)
    except (TimeoutError, asyncio.IncompleteReadError):
        return b""
    finally:
        writer.close()
        await writer.wait_closed()


def _head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()


def _mailgun_body(token: str) -> bytes:
    ts = str(int(time.time()))
    signature = hmac.new(MAILGUN_KEY.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    # "accepted" is not a delivery report: nothing is looked up or published, the answer is 200 with zeros.
    return json.dumps({"signature": {"timestamp": ts, "token": token, "signature": signature},
                       "event-data": {"event": "accepted", "recipient": "a@example.org", "pad": "x" * 2000}}).encode()


async def test_a_webhook_body_sent_in_several_segments_is_read_whole():
    """One ``content.read(n)`` returned only the first segment: the JSON was cut short and refused."""
    runner, port = await _webhook_app(Settings(environment="test", webhook_mailgun_signing_key=MAILGUN_KEY))
    try:
        body = _mailgun_body("mg-token-segments-0001")
        answer = await _exchange(port, _head("/webhooks/mailgun", len(body)),
                                 [body[:700], 0.3, body[700:1500], 0.3, body[1500:]])
    finally:
        await runner.cleanup()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"published": 0, "unmatched": 0}


async def test_a_webhook_body_that_never_finishes_is_refused_with_408_body_timeout():
    runner, port = await _webhook_app(Settings(environment="test", webhook_mailgun_signing_key=MAILGUN_KEY,
                                               api_body_timeout=1.0))
    try:
        body = _mailgun_body("mg-token-slow-0001")
        started = time.monotonic()
        answer = await _exchange(port, _head("/webhooks/mailgun", len(body)), [body[:100]], timeout=15)
        answered_after = time.monotonic() - started
    finally:
        await runner.cleanup()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_timeout"
    assert answered_after < 10  # the deadline (1 s), not the client's patience, ended it


@pytest.fixture(scope="module")
def sns_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def test_an_sns_message_whose_window_closes_during_the_certificate_fetch_is_refused(sns_key):
    """The age was judged before the signing certificate was fetched and the store asked with that earlier
    moment: a message admitted after signed_at + max_age, when the store no longer needs to remember it."""
    max_age = 60.0
    pem = make_certificate(sns_key)
    fetched: list[str] = []
    signed_at = time.time() - max_age + 5  # inside the window by 5 s when it arrives

    async def slow_fetch(url: str) -> bytes:  # AWS's certificate host answering slowly
        fetched.append(url)
        while time.time() <= signed_at + max_age + 0.2:
            await asyncio.sleep(0.1)
        return pem

    settings_ = Settings(environment="test", webhook_sns_topic_arns=[TOPIC], webhook_max_age=max_age)
    runner, port = await _webhook_app(settings_, fetch=slow_fetch)
    message = sns_message(sns_key, MessageId="mid-slow-cert", Message=json.dumps({"notificationType": "Delivery"}),
                          Timestamp=datetime.fromtimestamp(signed_at, UTC).isoformat().replace("+00:00", "Z"))
    body = json.dumps(message).encode()
    try:
        answer = await _exchange(port, _head("/webhooks/ses", len(body)), [body])
    finally:
        await runner.cleanup()
    assert fetched, "the first age check refused it already: the machine was too slow for this test's margin"
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "stale_timestamp"


async def test_a_webhook_is_judged_by_one_clock_before_and_after_the_store_answers():
    clock = [float(TS)]
    store = LateStore(clock)
    settings_ = Settings(environment="test", webhook_max_age=600)
    service = webhooks.WebhookService(settings_, EventPublisher(settings_, source="urn:test"), ReadStore(settings_),
                                      None, store, clock=lambda: clock[0])
    async with service.once("mailgun", "t-early", signed_at=TS - 100):
        pass
    store.delay = 5.0
    clock[0] = TS + 598  # inside when asked, outside when the store answers
    with pytest.raises(webhooks.routes.ApiError) as info:
        async with service.once("mailgun", "t-edge", signed_at=TS):
            pass
    assert (info.value.status, info.value.code) == (403, "stale_timestamp")
    with pytest.raises(webhooks.routes.ApiError) as info:  # stale before the store is even asked
        async with service.once("mailgun", "t-stale", signed_at=TS - 700):
            pass
    assert info.value.code == "stale_timestamp"
    assert ("mailgun", "t-stale") not in store._seen


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=2200), max_size=5, unique=True),
       pause=st.sampled_from([0.0, 0.01, 0.05]), tampered=st.booleans())
def test_property_however_a_webhook_body_is_cut_into_segments_it_is_judged_whole(cuts, pause, tampered):
    """The verdict on a signed webhook does not depend on how its body travels: split anywhere, with pauses, it
    is accepted exactly when it was signed as sent (and refused when one byte was changed)."""
    loop = asyncio.new_event_loop()
    try:
        runner, port = loop.run_until_complete(_webhook_app(Settings(environment="test",
                                                                     webhook_mailgun_signing_key=MAILGUN_KEY)))
        body = _mailgun_body(f"mg-token-prop-{time.monotonic_ns()}")
        if tampered:  # the signature covers timestamp + token only: change the token, keep the signature
            body = body.replace(b"mg-token-prop-", b"mg-token-prox-", 1)
        parts: list[bytes | float] = []
        start = 0
        for cut in sorted(c for c in cuts if c < len(body)):
            parts += [body[start:cut], pause]
            start = cut
        parts.append(body[start:])
        try:
            answer = loop.run_until_complete(_exchange(port, _head("/webhooks/mailgun", len(body)), parts))
        finally:
            loop.run_until_complete(runner.cleanup())
    finally:
        loop.close()
    status = answer.split(b" ", 2)[1]
    assert status == (b"403" if tampered else b"200"), answer[:300]
