"""Rebuild every read model from offset 0 into a fresh schema, for analysts and for recovery."""

from __future__ import annotations

import psycopg
from psycopg import sql

from config.settings import Settings
from projections.projector import Projector, ProjectorStats


async def replay(settings: Settings, schema: str) -> ProjectorStats:
    """Drop ``schema`` if it exists, then project the whole log into it and stop once caught up."""
    if schema == settings.projection_schema:
        raise ValueError("replay into the live schema is refused: name a fresh one")
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    return await Projector(settings, schema=schema).run(until_caught_up=True)
