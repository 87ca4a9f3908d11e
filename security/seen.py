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
from typing import Protocol

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS api_seen_once (
    scope text NOT NULL,
    token text NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (scope, token)
)"""
_CLAIM = """
INSERT INTO api_seen_once AS s (scope, token, expires_at) VALUES (%s, %s, %s)
ON CONFLICT (scope, token) DO UPDATE SET expires_at = EXCLUDED.expires_at WHERE s.expires_at < %s"""
_PRUNE_EVERY = 60.0
# Replica clocks may differ by this much (and a request may wait this long for the store) before a pruned row
# could let a replay in; far more than NTP-synchronised hosts ever differ. Rows live window + grace.
PRUNE_GRACE = 600.0


class SeenUnavailable(Exception):
    """The shared store could not be asked; the request must be refused (503), not waved through."""


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
    """``pool`` connections must have ``schema`` on their search path (the read store's pool does). A connection
    is waited for as long as the pool's own timeout (the API's ``api_db_timeout``)."""

    def __init__(self, pool: AsyncConnectionPool, schema: str) -> None:
        self._pool = pool
        self._schema = schema
        self._ready = False
        self._creating = asyncio.Lock()
        self._pruned = 0.0

    async def _ensure_table(self, conn: psycopg.AsyncConnection) -> None:
        if self._ready:
            return
        async with self._creating:  # the first requests of a process arrive together
            if self._ready:
                return
            try:
                await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema)))
                await conn.execute(TABLE_DDL)
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable, psycopg.errors.DuplicateSchema):
                pass  # another API process created it at the same moment (IF NOT EXISTS is not atomic)
            self._ready = True

    async def first_time(self, scope: str, token: str, *, expires_at: float, now: float) -> bool:
        try:
            async with self._pool.connection() as conn:
                await self._ensure_table(conn)
                cur = await conn.execute(_CLAIM, (scope, token, expires_at, now))
                claimed = cur.rowcount == 1
                if time.monotonic() - self._pruned > _PRUNE_EVERY:
                    self._pruned = time.monotonic()
                    await self._prune(conn, now)
                return claimed
        except (psycopg.Error, OSError, TimeoutError) as exc:  # psycopg_pool.PoolTimeout is a psycopg.Error
            raise SeenUnavailable(str(exc)) from None

    async def _prune(self, conn: psycopg.AsyncConnection, now: float) -> None:
        await conn.execute("DELETE FROM api_seen_once WHERE expires_at < %s", (now - PRUNE_GRACE,))

    async def check(self) -> None:
        try:
            async with self._pool.connection() as conn:
                await self._ensure_table(conn)
                await conn.execute("SELECT 1 FROM api_seen_once LIMIT 1")
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise SeenUnavailable(str(exc)) from None

    async def forget(self, scope: str, token: str) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.execute("DELETE FROM api_seen_once WHERE scope = %s AND token = %s", (scope, token))
        except (psycopg.Error, OSError, TimeoutError):
            pass  # the token stays refused until it expires: the provider's next retry is a new delivery
