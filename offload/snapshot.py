"""Snapshots of the read models, so that a replay needs only the log written since the last snapshot.

The projector commits each poll's row changes and its offsets (``projection_offsets``) in one transaction, so
every committed state of the read-model schema is a consistent "read models as of these offsets". A snapshot
copies that state, in one REPEATABLE READ transaction, into a schema of its own; ``offload replay NEW
--from-snapshot SNAP`` copies it into a fresh schema and projects the log from the snapshot's offsets on.

A replay from a snapshot is refused when the log no longer holds every record after the snapshot's offsets
(retention deleted some): the rebuild would silently miss them. See docs/retention.md for how often to take
one and how long the topics must keep records for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from config.settings import Settings
from eventlog.topics import offsets_of
from projections import tracking
from projections.projector import PROJECTED_TOPICS, PROJECTION, Projector, ProjectorStats
from projections.read_models import open_read_models


class SnapshotTooOld(Exception):
    """The log has lost records the snapshot does not hold: a replay from it would miss them."""


@dataclass(frozen=True)
class Snapshot:
    schema: str
    rows: dict[str, int]  # table -> rows copied
    offsets: dict[tuple[str, int], int]  # (topic, partition) -> next offset the snapshot has not applied


async def _tables(conn: psycopg.AsyncConnection, schema: str) -> dict[str, list[str]]:
    cur = await conn.execute(
        """SELECT c.table_name, array_agg(c.column_name::text ORDER BY c.ordinal_position)
           FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE c.table_schema = %s AND t.table_type = 'BASE TABLE' GROUP BY c.table_name""", (schema,))
    return {name: columns for name, columns in await cur.fetchall()}


async def _schema_exists(conn: psycopg.AsyncConnection, schema: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,))
    return await cur.fetchone() is not None


async def copy_read_models(settings: Settings, source: str, target: str) -> Snapshot:
    """Create the read models in ``target`` (which must not exist) and copy ``source``'s rows into them."""
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as admin:
        if not await _schema_exists(admin, source):
            raise ValueError(f"schema {source!r} does not exist")
        if await _schema_exists(admin, target):
            raise ValueError(f"schema {target!r} exists already: name a fresh one")
    # The schema with the DDL of this code version, so sequences and indexes are its own.
    conn = await open_read_models(settings, target)
    try:
        targets = await _tables(conn, target)
        sources = await _tables(conn, source)
        rows: dict[str, int] = {}
        async with conn.transaction():
            # One snapshot of the source: rows and offsets as one projector transaction left them.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            for table, columns in sorted(targets.items()):
                shared = [c for c in columns if c in sources.get(table, [])]
                if not shared:
                    continue
                names = sql.SQL(", ").join(map(sql.Identifier, shared))
                cur = await conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                    sql.Identifier(target, table), names, names, sql.Identifier(source, table)))
                rows[table] = cur.rowcount
            # Serial columns continue after the copied ids.
            cur = await conn.execute(
                """SELECT table_name, column_name FROM information_schema.columns
                   WHERE table_schema = %s AND column_default LIKE 'nextval(%%'""", (target,))
            for table, column in await cur.fetchall():
                await conn.execute(
                    sql.SQL("SELECT setval(pg_get_serial_sequence(%s, %s), coalesce(max({}), 0) + 1, false) "
                            "FROM {}").format(sql.Identifier(column), sql.Identifier(target, table)),
                    (f'"{target}"."{table}"', column))
            async with conn.cursor() as cur:
                offsets = await tracking.load(cur, PROJECTION)
        return Snapshot(target, rows, offsets)
    finally:
        await conn.close()


async def take_snapshot(settings: Settings, name: str) -> Snapshot:
    """Copy the live read models (``settings.projection_schema``) into the new schema ``name``."""
    if name == settings.projection_schema:
        raise ValueError("a snapshot needs a schema of its own")
    return await copy_read_models(settings, settings.projection_schema, name)


async def log_beginnings(settings: Settings) -> dict[tuple[str, int], int]:
    """The first offset each projected partition still holds."""
    return await offsets_of(settings, PROJECTED_TOPICS, end=False)


def missing_history(offsets: dict[tuple[str, int], int], beginnings: dict[tuple[str, int], int]) -> list[str]:
    """Partitions where the log starts after the snapshot's position: records in between are lost."""
    return [f"{topic}[{partition}]: snapshot at {offsets.get((topic, partition), 0)}, log starts at {first}"
            for (topic, partition), first in sorted(beginnings.items())
            if first > offsets.get((topic, partition), 0)]


async def replay_from_snapshot(settings: Settings, snapshot: str, schema: str) -> ProjectorStats:
    """Rebuild the read models into the new schema ``schema``: the snapshot's rows, then the log after it."""
    if schema == settings.projection_schema:
        raise ValueError("replay into the live schema is refused: name a fresh one")
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    copied = await copy_read_models(settings, snapshot, schema)
    lost = missing_history(copied.offsets, await log_beginnings(settings))
    if lost:
        async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        raise SnapshotTooOld(f"snapshot {snapshot!r} is older than the log: " + "; ".join(lost[:5])
                             + (f" (+{len(lost) - 5} more)" if len(lost) > 5 else ""))
    return await Projector(settings, schema=schema).run(until_caught_up=True)
