"""Rate limits every API replica shares: the public routes' token buckets and the admin sign-in throttle.

Kept in Postgres beside the replay memory (security.seen: the API's ``api_seen_schema``, apart from the read
models, so a read-model rebuild keeps them), so N replicas behind a balancer allow one budget, not N. Each
decision is one statement (INSERT ... ON CONFLICT DO UPDATE takes the row lock): two replicas asked for the
same client at the same moment cannot both spend its last token or both admit its last sign-in attempt.

- ``api_rate_buckets``: one row per (scope, client key): tokens and when they were counted (wall clock, the
  one every replica shares); ``allowed`` says whether the last call took a token.
- ``api_login_failures``: one row per client key: the start times of its sign-in attempts within the window
  (an attempt counts as failed from its start and is forgiven, the row deleted, when it succeeds).

Rows that no longer matter (a bucket full again, attempts older than the window) are pruned now and then, with
the same grace as the replay memory for replica clocks that differ. Every failure to use the store is
LimitStoreUnavailable; the caller (api.public) then limits with its own memory for a while (back-off) and says
so in health: a store that is down neither lets everyone through nor locks everyone out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from security.seen import PRUNE_GRACE
from security.shared_schema import create_schema

_DDL = ("""
CREATE TABLE IF NOT EXISTS {}.api_rate_buckets (
    scope text NOT NULL,
    key text NOT NULL,
    tokens double precision NOT NULL,
    at double precision NOT NULL,
    allowed boolean NOT NULL,
    PRIMARY KEY (scope, key)
)""", """
CREATE TABLE IF NOT EXISTS {}.api_login_failures (
    key text PRIMARY KEY,
    attempts double precision[] NOT NULL,
    admitted boolean NOT NULL
)""")
# The tokens after refilling since the row's time; every SET expression sees the row as it was.
_REFILLED = "LEAST(%(cap)s, b.tokens + GREATEST(0, %(now)s - b.at) * %(rate)s)"
_TAKE = f"""
INSERT INTO {{}}.api_rate_buckets AS b (scope, key, tokens, at, allowed)
VALUES (%(scope)s, %(key)s, %(cap)s - 1, %(now)s, true)
ON CONFLICT (scope, key) DO UPDATE SET
    tokens = {_REFILLED} - CASE WHEN {_REFILLED} >= 1 THEN 1 ELSE 0 END,
    at = GREATEST(b.at, %(now)s),
    allowed = {_REFILLED} >= 1
RETURNING tokens, allowed"""
_RECENT = "ARRAY(SELECT a FROM unnest(f.attempts) a WHERE a > %(now)s - %(window)s)"
_BEGIN = f"""
INSERT INTO {{}}.api_login_failures AS f (key, attempts, admitted)
VALUES (%(key)s, ARRAY[%(now)s::double precision], true)
ON CONFLICT (key) DO UPDATE SET
    attempts = CASE WHEN cardinality({_RECENT}) < %(max)s THEN {_RECENT} || %(now)s::double precision
                    ELSE {_RECENT} END,
    admitted = cardinality({_RECENT}) < %(max)s
RETURNING admitted"""
_PRUNE_EVERY = 60.0


class LimitStoreUnavailable(Exception):
    """The shared limits could not be used (Postgres down, no right to create the tables, ...)."""


class SharedLimits:
    """Token buckets and the sign-in throttle in ``schema``; connections from the API's pool, waited for at most
    ``timeout`` seconds (a limit check must not hold a public request long)."""

    def __init__(self, pool: AsyncConnectionPool, schema: str, *, timeout: float) -> None:
        self._pool = pool
        self._schema = schema
        self._timeout = timeout
        name = sql.Identifier(schema)
        self._ddl = [sql.SQL(ddl).format(name) for ddl in _DDL]
        self._take = sql.SQL(_TAKE).format(name)
        self._begin = sql.SQL(_BEGIN).format(name)
        self._forgive = sql.SQL("DELETE FROM {}.api_login_failures WHERE key = %s").format(name)
        self._prune_buckets = sql.SQL("DELETE FROM {}.api_rate_buckets WHERE at < %s").format(name)
        self._prune_failures = sql.SQL(
            "DELETE FROM {}.api_login_failures WHERE (SELECT max(a) FROM unnest(attempts) a) < %s").format(name)
        self._probe = sql.SQL("SELECT 1 FROM {}.api_rate_buckets, {}.api_login_failures LIMIT 1").format(name, name)
        self._ready = False
        self._creating = asyncio.Lock()
        self._pruned: dict[str, float] = {}

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        try:
            async with asyncio.timeout(self._timeout), self._pool.connection() as conn:
                if not self._ready:
                    async with self._creating:
                        if not self._ready:
                            await self._create(conn)
                yield conn
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            self._ready = False  # dropped under us: created again on the next call
            raise LimitStoreUnavailable(str(exc)) from None
        except (psycopg.Error, OSError, TimeoutError) as exc:  # PoolTimeout is a psycopg.OperationalError
            raise LimitStoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def _create(self, conn: psycopg.AsyncConnection) -> None:
        await create_schema(conn, self._schema, self._ddl)
        self._ready = True

    async def take(self, scope: str, key: str, *, per_minute: int, now: float | None = None) -> float:
        """Spend one of the client's tokens: 0.0 when allowed, else the seconds until one is back."""
        now = time.time() if now is None else now
        rate = per_minute / 60.0
        async with self._connection() as conn:
            cur = await conn.execute(self._take, {"scope": scope, "key": key, "cap": float(per_minute),
                                                  "rate": rate, "now": now})
            row = await cur.fetchone()
            assert row is not None  # INSERT ... ON CONFLICT DO UPDATE always returns the row
            # A bucket untouched for a minute (capacity / rate) is full again: the same as no row.
            await self._maybe_prune(conn, "buckets", now - 60.0)
        tokens, allowed = row
        return 0.0 if allowed else (1.0 - tokens) / rate

    async def begin(self, key: str, *, window: float, max_failures: int, now: float | None = None) -> bool:
        """Admit one sign-in attempt (counted as failed until it succeeds), or False when the client is throttled."""
        now = time.time() if now is None else now
        async with self._connection() as conn:
            cur = await conn.execute(self._begin, {"key": key, "now": now, "window": window, "max": max_failures})
            row = await cur.fetchone()
            assert row is not None
            await self._maybe_prune(conn, "failures", now - window)
        return bool(row[0])

    async def forgive(self, key: str) -> None:
        async with self._connection() as conn:
            await conn.execute(self._forgive, (key,))

    async def check(self) -> None:
        async with self._connection() as conn:
            await conn.execute(self._probe)

    async def _maybe_prune(self, conn: psycopg.AsyncConnection, table: str, before: float) -> None:
        """Now and then, delete the rows that stopped mattering before ``before`` (less the clock grace)."""
        if time.monotonic() - self._pruned.get(table, 0.0) < _PRUNE_EVERY:
            return
        self._pruned[table] = time.monotonic()
        statement = self._prune_buckets if table == "buckets" else self._prune_failures
        await conn.execute(statement, (before - PRUNE_GRACE,))
