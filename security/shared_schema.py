"""Creating a schema and what is shared in it, once, however many processes start together: the API replicas'
replay memory and rate limits (security.seen, security.limits), a projector's schema (projections.projector).

``CREATE ... IF NOT EXISTS`` is not atomic: two sessions creating the same schema or table at the same moment
both pass the existence check, and the second fails on the catalog's unique index once the first commits. Read
as "already there", that error let an API replica go on while another was still creating the next table, and
its first requests met "relation ... does not exist" (the shared rate limit then fell back to the replica's own
memory for its back-off; the replay memory answered 503). So a creator first takes a transaction-scoped
advisory lock on the schema's name, the key a projector takes for its read models (projections.read_models): the
second creator waits for the first to commit, then finds everything in place.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql


async def create_schema(conn: psycopg.AsyncConnection, schema: str, statements: Iterable[sql.Composed] = ()) -> None:
    """Create ``schema`` and run ``statements`` (each ``CREATE ... IF NOT EXISTS``) in one transaction."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (schema,))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for statement in statements:
            await conn.execute(statement)
