"""What processes share in Postgres is created once however many of them start together. API replicas (the
replay memory, the rate limits): every first call of every replica is answered by the shared store, none falls
back or is refused because another replica was still creating a table; each round is a fresh schema and twelve
first calls at once, each on its own connection (as replicas behind a balancer are). Projectors: opening a
schema that is not there yet never fails because another projector, or an API replica creating its shared
tables in that schema, is creating it."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from projections.read_models import open_read_models
from security.limits import SharedLimits
from security.seen import PostgresSeen

pytestmark = pytest.mark.integration

ROUNDS = 15
REPLICAS = 6


async def first_calls_at_once(database_url: str, schema: str) -> list[BaseException | object]:
    pools = [AsyncConnectionPool(database_url, min_size=2, max_size=2, kwargs={"autocommit": True}, open=False)
             for _ in range(REPLICAS)]
    for pool in pools:
        await pool.open(wait=True, timeout=30)
    try:
        calls = []
        for i, pool in enumerate(pools):
            calls.append(SharedLimits(pool, schema, timeout=10.0).take("public", f"client-{i}", per_minute=6))
            calls.append(PostgresSeen(pool, schema).first_time("request", f"sig-{i}", expires_at=2e9, now=1e9))
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        for pool in pools:
            await pool.close()


def test_replicas_starting_together_all_find_their_shared_tables(database_url):
    schemas = [f"shared_{uuid.uuid4().hex[:10]}" for _ in range(ROUNDS)]
    try:
        for schema in schemas:
            answers = asyncio.run(first_calls_at_once(database_url, schema))
            failed = [repr(a) for a in answers if isinstance(a, BaseException)]
            assert failed == [], f"{schema}: {failed}"
            assert answers == [0.0, True] * REPLICAS  # every token taken, every signature new: all from the store
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_projectors_starting_together_all_connect_to_their_new_schema(database_url, settings_factory):
    settings = settings_factory()
    schemas = [f"projected_{uuid.uuid4().hex[:10]}" for _ in range(ROUNDS)]

    async def connect_at_once(schema: str) -> list[BaseException | object]:
        # Projectors opening their read models beside API replicas creating their shared tables in the same
        # schema (api_seen_schema set to the projector's: allowed, not the default), all under one advisory lock.
        pool = AsyncConnectionPool(database_url, min_size=REPLICAS, max_size=REPLICAS,
                                   kwargs={"autocommit": True}, open=False)
        await pool.open(wait=True, timeout=30)
        try:
            answers = await asyncio.gather(*(open_read_models(settings, schema) for _ in range(REPLICAS)),
                                           *(PostgresSeen(pool, schema).first_time("request", f"sig-{i}",
                                                                                   expires_at=2e9, now=1e9)
                                             for i in range(REPLICAS)),
                                           return_exceptions=True)
        finally:
            await pool.close()
        for answer in answers:
            if isinstance(answer, psycopg.AsyncConnection):
                await answer.close()
        return answers

    try:
        for schema in schemas:
            failed = [repr(c) for c in asyncio.run(connect_at_once(schema)) if isinstance(c, BaseException)]
            assert failed == [], f"{schema}: {failed}"
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
