"""Issue 11 finding 5: the replay memory every API replica shares, against the real Postgres.

Replicas prune expired rows by their own clocks, so a row lives a grace past its expiry; the memory sits in a
schema of its own, so pointing an API at a rebuilt read-model schema keeps it; when it cannot be used, signed
requests answer 503 with a code and health says why, and it comes back by itself. A property test drives two
replicas with skewed clocks, slow bodies, slow store answers and pruning at any moment. Each test fails on the
code before these changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from config.settings import ApiKey
from security.seen import PostgresSeen
from security.signing import AuthError, RequestVerifier, sign
from tests.support.api import ApiServer, SignedClient, api_keys, send
from tests.support.observe import wait_for

pytestmark = pytest.mark.integration

K7 = "replay-store-k7-secret-0123456789"
WINDOW = 300
TS = 1_800_000_000


@pytest.fixture
def loop_and_pool(database_url: str) -> Iterator[tuple[asyncio.AbstractEventLoop, AsyncConnectionPool, str]]:
    """One event loop and pool for a whole test (hypothesis runs many examples in it), a fresh schema."""
    schema = f"seen_{uuid.uuid4().hex[:10]}"
    loop = asyncio.new_event_loop()
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False)
    loop.run_until_complete(pool.open(wait=True, timeout=30))
    try:
        yield loop, pool, schema
    finally:
        loop.run_until_complete(pool.close())
        loop.close()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_a_replica_whose_clock_runs_ahead_does_not_prune_a_row_another_replica_still_needs(loop_and_pool):
    loop, pool, schema = loop_and_pool
    a = PostgresSeen(pool, schema)
    run = loop.run_until_complete
    assert run(a.first_time("request", "sig-1", expires_at=TS + WINDOW, now=TS))
    # Replica B starts (its first call prunes) with a clock 2 s ahead of A's, just past the row's expiry.
    b = PostgresSeen(pool, schema)
    assert run(b.first_time("request", "sig-other", expires_at=TS + WINDOW + 2, now=TS + WINDOW + 1))
    # A, 1 s before the edge by its clock, is offered a replay of sig-1: still remembered.
    assert not run(a.first_time("request", "sig-1", expires_at=TS + WINDOW, now=TS + WINDOW - 1))
    # Expired rows are purged once the grace has passed (a third replica starting much later).
    c = PostgresSeen(pool, schema)
    assert run(c.first_time("request", "sig-late", expires_at=TS + 3 * WINDOW, now=TS + 2 * WINDOW + 700))

    async def tokens() -> list[str]:
        async with pool.connection() as conn:
            cur = await conn.execute(sql.SQL("SELECT token FROM {}.api_seen_once ORDER BY token").format(
                sql.Identifier(schema)))
            return [row[0] for row in await cur.fetchall()]

    assert run(tokens()) == ["sig-late"]


def _invalid_job(client: SignedClient) -> tuple[bytes, dict[str, str]]:
    """A signed request the API admits and then refuses as a job (422): no Kafka record, no read model needed."""
    body = json.dumps({"job_id": f"replay-{uuid.uuid4().hex[:8]}", "type": "nonsense"}).encode()
    return body, client.headers("POST", "/api/v1/jobs", body)


def test_an_api_pointed_at_a_rebuilt_read_model_schema_still_refuses_replays_of_the_old_one(settings_factory):
    """`offload replay` rebuilds the read models into a fresh schema; the API is then pointed at it. The replay
    memory is not a read model and must not start empty there."""
    old = settings_factory(api_keys=api_keys(k7=(K7, 7)))
    rebuilt = old.model_copy(update={"projection_schema": f"{old.projection_schema}_rebuilt"})
    with ApiServer(old) as before, ApiServer(rebuilt) as after:
        body, headers = _invalid_job(SignedClient(before.base_url, "k7", K7))
        first = send(before.base_url, "POST", "/api/v1/jobs", body, headers)
        assert first.status == 422, (first.status, first.body)
        replay = send(after.base_url, "POST", "/api/v1/jobs", body, headers)
        assert (replay.status, replay.code) == (401, "replayed_request")


def test_an_unusable_replay_store_is_a_503_with_a_code_and_named_in_health_until_it_is_usable_again(
        settings_factory, database_url):
    """Postgres answers its ping, but the replay table cannot be used (here: a table of another shape where the
    store's should be; in production, e.g., a database user without the right to create it). Nothing signed is
    admitted, health says why, and once the table can be made the store works again without a restart."""
    settings = settings_factory(api_keys=api_keys(k7=(K7, 7)), api_health_interval=0.2, api_retry_after=3)
    schema = sql.Identifier(settings.api_seen_schema)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        conn.execute(sql.SQL("CREATE TABLE {}.api_seen_once (unrelated int)").format(schema))
    with ApiServer(settings) as server:
        client = SignedClient(server.base_url, "k7", K7)

        def health() -> dict:
            return send(server.base_url, "GET", "/api/v1/health", b"", {}).body

        down = wait_for(lambda: (h := health())["checks"].get("replay-store", {}).get("up") is False and h or None,
                        timeout=30, what="health to name the replay store")
        assert down["status"] == "degraded" and down["checks"]["postgres"]["up"]
        assert any(r.startswith("replay-store:") and "refused" in r for r in down["reasons"]), down["reasons"]
        body, headers = _invalid_job(client)
        request = urllib.request.Request(server.base_url + "/api/v1/jobs", data=body, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert (refused.value.code, refused.value.headers["Retry-After"]) == (503, "3")
        assert json.loads(refused.value.read())["error"]["code"] == "replay_store_unavailable"

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE {}.api_seen_once").format(schema))
        wait_for(lambda: health()["checks"]["replay-store"]["up"] or None, timeout=30,
                 what="the replay store to come back")
        body, headers = _invalid_job(client)
        assert send(server.base_url, "POST", "/api/v1/jobs", body, headers).status == 422
        assert send(server.base_url, "POST", "/api/v1/jobs", body, headers).code == "replayed_request"


# --- property: two replicas, skewed clocks, slow bodies and store answers, pruning at any moment --------------


class Adversary:
    """A replica's view of the shared store at its worst: its answer comes ``delay`` seconds (of the shared real
    time) after it was asked, and meanwhile every replica has (re)started and pruned by its own clock."""

    def __init__(self, pool: AsyncConnectionPool, schema: str, real: list[float], skews: dict[str, float]) -> None:
        self.pool, self.schema, self.real, self.skews = pool, schema, real, skews
        self.inner = PostgresSeen(pool, schema)
        self.delay = 0.0

    async def prune_everywhere(self) -> None:
        for skew in self.skews.values():
            now = self.real[0] + skew  # a replica starting now: its first claim prunes by its clock
            await PostgresSeen(self.pool, self.schema).first_time("probe", uuid.uuid4().hex, expires_at=now, now=now)

    async def first_time(self, scope: str, token: str, *, expires_at: float, now: float) -> bool:
        self.real[0] += self.delay
        await self.prune_everywhere()
        return await self.inner.first_time(scope, token, expires_at=expires_at, now=now)

    async def forget(self, scope: str, token: str) -> None:
        await self.inner.forget(scope, token)

    async def check(self) -> None:
        await self.inner.check()


# Real time from TS - WINDOW: anywhere, with extra weight on the far edge of the window (TS + WINDOW), where a
# replica's clock, a slow answer and another replica's pruning meet.
moment = st.floats(min_value=0, max_value=2.5 * WINDOW) | st.floats(min_value=2 * WINDOW - 150,
                                                                    max_value=2 * WINDOW + 30)
skew = st.floats(min_value=-120, max_value=120) | st.sampled_from([-120.0, -60.0, 0.0, 60.0, 120.0])
delay = st.floats(min_value=0, max_value=20) | st.sampled_from([0.0, 1.0, 5.0])
attempt = st.tuples(st.sampled_from(["a", "b"]), moment, delay, delay)  # replica, headers at, body, store delays


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Two cases always tried: a replica a minute ahead prunes the original just past the edge by its clock while a
# replica a minute behind is offered the replay; a store answer 5 s late crosses the edge while rows are pruned.
@example(skew_a=-60.0, skew_b=60.0, attempts=[("a", WINDOW, 0.0, 0.0), ("a", 2 * WINDOW - 10, 0.0, 0.0)])
@example(skew_a=0.0, skew_b=0.0, attempts=[("b", WINDOW, 0.0, 0.0), ("a", 2 * WINDOW - 1, 0.0, 5.0)])
@given(skew_a=skew, skew_b=skew, attempts=st.lists(attempt, min_size=2, max_size=4))
def test_property_two_replicas_never_both_admit_one_signed_request(loop_and_pool, skew_a, skew_b, attempts):
    """Replica clocks differ by up to four minutes; bodies and store answers take up to 20 s; every replica
    prunes by its own clock before each request and while each store answer is on its way. A signed request is
    still admitted at most once."""
    loop, pool, schema = loop_and_pool
    real = [0.0]
    skews = {"a": skew_a, "b": skew_b}
    stores = {name: Adversary(pool, schema, real, skews) for name in skews}
    keys = {"k7": ApiKey(secret=SecretStr(K7), company_id=7)}
    replicas = {name: RequestVerifier(keys, window=WINDOW, clock=lambda s=skew: real[0] + s, seen=stores[name])
                for name, skew in skews.items()}
    nonce = uuid.uuid4().hex  # a request of its own per example: the table is shared by all examples
    headers = {"X-Offload-Key-Id": "k7", "X-Offload-Timestamp": str(TS), "X-Offload-Nonce": nonce,
               "X-Offload-Signature": sign(K7, "POST", "/api/v1/jobs", str(TS), nonce, b"{}")}
    admitted = []
    for name, at, body_delay, store_delay in sorted(attempts, key=lambda a: a[1]):
        real[0] = max(real[0], TS - WINDOW + at)
        loop.run_until_complete(stores[name].prune_everywhere())
        replica = replicas[name]
        try:
            signed = replica.check_headers(headers)
            real[0] += body_delay
            stores[name].delay = store_delay
            loop.run_until_complete(replica.admit(signed, "POST", "/api/v1/jobs", b"{}"))
            admitted.append((name, at))
        except AuthError:
            pass
    assert len(admitted) <= 1, admitted


class CuttableLink:
    """A TCP relay on loopback between the API and the real Postgres that the test can cut and restore: an outage
    of the database as this API sees it, without stopping the Postgres other tests share."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host, self.target_port, self.port = target_host, target_port, 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cuttable-link", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> CuttableLink:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def restore(self) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
            self.port = self._server.sockets[0].getsockname()[1]

        self._run(start())

    def cut(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for writer in self._writers:
                writer.transport.abort()
            self._writers.clear()

        self._run(stop())


def test_while_postgres_is_unreachable_signed_requests_and_webhooks_fail_closed_and_health_names_the_store(
        settings_factory, database_url):
    """Finding 5's outage: nothing signed is admitted unchecked (503 with a code), health names the replay store,
    and both come back by themselves once Postgres answers again."""
    mailgun_key = "replay-store-mailgun-key-0123456789"
    target = psycopg.conninfo.conninfo_to_dict(database_url)
    with CuttableLink(str(target.get("host") or "127.0.0.1"), int(target.get("port") or 5432)) as link:
        through_link = psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=link.port)
        settings = settings_factory(api_keys=api_keys(k7=(K7, 7)), database_url=through_link, api_db_timeout=3.0,
                                    api_health_interval=0.2, webhook_mailgun_signing_key=mailgun_key)
        with ApiServer(settings) as server:
            client = SignedClient(server.base_url, "k7", K7)

            def checks() -> dict:
                return send(server.base_url, "GET", "/api/v1/health", b"", {}).body["checks"]

            wait_for(lambda: checks()["replay-store"]["up"] or None, timeout=30, what="a usable replay store")
            body, headers = _invalid_job(client)
            assert send(server.base_url, "POST", "/api/v1/jobs", body, headers).status == 422

            link.cut()
            body, headers = _invalid_job(client)
            refused = send(server.base_url, "POST", "/api/v1/jobs", body, headers)
            assert (refused.status, refused.code) == (503, "database_unavailable")
            ts, token = str(int(time.time())), "mg-token-outage-0001"
            webhook = json.dumps({"signature": {"timestamp": ts, "token": token, "signature": hmac.new(
                mailgun_key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()},
                "event-data": {"event": "accepted"}}).encode()
            json_headers = {"Content-Type": "application/json"}
            assert send(server.base_url, "POST", "/webhooks/mailgun", webhook, json_headers).status == 503
            down = wait_for(lambda: (c := checks())["replay-store"]["up"] is False and c or None, timeout=30,
                            what="health to name the replay store")
            assert "refused" in down["replay-store"]["reason"] and down["postgres"]["up"] is False

            link.restore()
            wait_for(lambda: checks()["replay-store"]["up"] or None, timeout=60, what="the replay store back")
            assert send(server.base_url, "POST", "/api/v1/jobs", body, headers).status == 422  # never admitted
            assert send(server.base_url, "POST", "/webhooks/mailgun", webhook, json_headers).status == 200
            assert send(server.base_url, "POST", "/webhooks/mailgun", webhook, json_headers).code == "replayed_request"
