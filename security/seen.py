"""Seen before? for everything that must be accepted once: signed API requests, provider webhooks, retry
requests. Kept in Postgres so every API replica behind a balancer refuses the others' replays.

One row per (scope, token) with the unix time after which it may be forgotten. ``first_time`` is a single
INSERT ... ON CONFLICT: two replicas offered the same token at the same moment cannot both win. An expired row
is taken over by the same statement (judged by the caller's clock, the one its window check uses). Old rows
are deleted now and then, but only ``PRUNE_GRACE`` seconds after they expired: the replica that prunes judges
expiry by its own clock, and a replica whose clock runs behind (or whose request waited for a pooled
connection) may still be inside the window of a token another replica thinks is long gone. When Postgres cannot
be reached the answer is "unavailable" (a 503), never "first time": a replay store that fails open is no
replay store.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from security.shared_schema import create_schema

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS {}.api_seen_once (
    scope text NOT NULL,
    token text NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (scope, token)
)"""
_CLAIM = """
INSERT INTO {}.api_seen_once AS s (scope, token, expires_at) VALUES (%s, %s, %s)
ON CONFLICT (scope, token) DO UPDATE SET expires_at = EXCLUDED.expires_at WHERE s.expires_at < %s"""
_PRUNE_EVERY = 60.0
# Replica clocks may differ by this much (and a request may wait this long for the store) before a pruned row
# could let a replay in; far more than NTP-synchronised hosts ever differ. Rows live window + grace.
PRUNE_GRACE = 600.0


class SeenUnavailable(Exception):
    """The shared store could not be asked; the request must be refused (503), not waved through.
    ``database_down``: Postgres itself could not be reached (else it answered, but the store cannot be used)."""

    def __init__(self, message: str, *, database_down: bool) -> None:
        super().__init__(message)
        self.database_down = database_down


class SeenOnce(Protocol):
    async def first_time(self, scope: str, token: str, *, expires_at: float, now: float) -> bool: ...

    async def forget(self, scope: str, token: str) -> None: ...

    async def check(self) -> None:
        """Raises SeenUnavailable when the store cannot be used now (health asks this in the background)."""


def token_of(*parts: str | bytes) -> str:
    """A fixed-size token for long or binary material (a webhook body, an SNS message id)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\x00")
    return digest.hexdigest()


class MemorySeen:
    """The same contract in one process: for unit tests and tools that run without Postgres."""

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    async def first_time(self, scope: str, token: str, *, expires_at: float, now: float) -> bool:
        for key, until in list(self._seen.items()):
            if until < now:
                del self._seen[key]
        if (scope, token) in self._seen:
            return False
        self._seen[(scope, token)] = expires_at
        return True

    async def forget(self, scope: str, token: str) -> None:
        self._seen.pop((scope, token), None)

    async def check(self) -> None:
        return None


class PostgresSeen:
    """The table ``api_seen_once`` in ``schema`` (the API's ``api_seen_schema``, apart from the read models, so
    pointing the API at a rebuilt read-model schema keeps the memory). A connection is waited for as long as
    the pool's own timeout (the API's ``api_db_timeout``)."""

    def __init__(self, pool: AsyncConnectionPool, schema: str) -> None:
        self._pool = pool
        self._schema = schema
        table = sql.Identifier(schema)
        self._ddl = sql.SQL(TABLE_DDL).format(table)
        self._claim = sql.SQL(_CLAIM).format(table)
        self._prune_sql = sql.SQL("DELETE FROM {}.api_seen_once WHERE expires_at < %s").format(table)
        self._probe = sql.SQL("SELECT scope, token, expires_at FROM {}.api_seen_once LIMIT 1").format(table)
        self._forget = sql.SQL("DELETE FROM {}.api_seen_once WHERE scope = %s AND token = %s").format(table)
        self._ready = False
        self._creating = asyncio.Lock()
        self._pruned = 0.0

    async def _ensure_table(self, conn: psycopg.AsyncConnection) -> None:
        if self._ready:
            return
        async with self._creating:  # the first requests of a process arrive together
            if self._ready:
                return
            await create_schema(conn, self._schema, [self._ddl])
            self._ready = True

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled connection with the table in place; every failure is SeenUnavailable (fail closed)."""
        try:
            async with self._pool.connection() as conn:
                await self._ensure_table(conn)
                yield conn
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            self._ready = False  # dropped under us (a schema dropped by hand): created again on the next call
            raise SeenUnavailable(str(exc), database_down=False) from None
        # psycopg_pool.PoolTimeout is an OperationalError: no connection came in time
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError) as exc:
            raise SeenUnavailable(str(exc), database_down=True) from None
        except psycopg.Error as exc:  # it answered: no right to create the table, a table of another shape ...
            raise SeenUnavailable(str(exc), database_down=False) from None

    async def first_time(self, scope: str, token: str, *, expires_at: float, now: float) -> bool:
        async with self._connection() as conn:
            cur = await conn.execute(self._claim, (scope, token, expires_at, now))
            claimed = cur.rowcount == 1
            if time.monotonic() - self._pruned > _PRUNE_EVERY:
                self._pruned = time.monotonic()
                await self.prune(conn, now)
        return claimed

    async def prune(self, conn: psycopg.AsyncConnection, now: float) -> None:
        """Delete the rows that expired more than PRUNE_GRACE before ``now`` (this replica's clock)."""
        await conn.execute(self._prune_sql, (now - PRUNE_GRACE,))

    async def check(self) -> None:
        async with self._connection() as conn:
            await conn.execute(self._probe)

    async def forget(self, scope: str, token: str) -> None:
        try:
            async with self._connection() as conn:
                await conn.execute(self._forget, (scope, token))
        except SeenUnavailable:
            pass  # the token stays refused until it expires: the provider's next retry is a new delivery
