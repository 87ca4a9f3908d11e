"""The read models' tables: created in a projector's schema, on its connection, before it applies anything.

``open_read_models`` is what a projector (and a snapshot, for its target) opens: one connection whose schema, read
models and staging tables are created by one multi-statement execute. Postgres runs such a string as one
implicit transaction, so the schema lock is taken once and a statement that fails leaves nothing created (and,
for a replay, nothing dropped). Created one statement at a time, the same DDL took 15 round trips.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from config.settings import Settings
from projections import audit, callbacks, company_settings, jobs, recipients, suppressions, templates, tracking

# Read models in the order they apply a poll: settings and jobs first, then recipients (which raise job
# counters), then the audit log.
READ_MODELS = (company_settings, jobs, recipients, callbacks, suppressions, templates, audit)


def read_models_ddl(schema: str, *, drop_first: bool = False) -> sql.Composed:
    """``schema`` (dropped first with ``drop_first``: a replay's fresh one) with the read models and this
    connection's staging tables in it, and the connection's search_path set to it, as one string.

    The lock is the key :func:`security.shared_schema.create_schema` takes (hashtext of the schema's name), so the
    API creating its shared tables in the same schema and a projector creating its read models wait for each
    other."""
    name = sql.Identifier(schema)
    lock = sql.SQL("SELECT pg_advisory_xact_lock(hashtext({}))").format(sql.Literal(schema))
    statements: list[sql.Composable] = [lock]
    if drop_first:
        statements.append(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))
    statements += [sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name),
                   sql.SQL("SET search_path TO {}").format(name)]
    statements += [sql.SQL(ddl.strip().rstrip(";")) for ddl in
                   (tracking.DDL, *(model.DDL for model in READ_MODELS), recipients.STAGING)]
    return sql.SQL(";\n").join(statements) + sql.SQL(";")


async def open_read_models(settings: Settings, schema: str | None = None, *,
                           drop_first: bool = False) -> psycopg.AsyncConnection:
    """A connection to ``schema`` (the live one by default) with its read models created (see read_models_ddl).

    Nothing is left behind when it fails or is cancelled: the connection is closed and the implicit transaction
    with it."""
    target = schema or settings.projection_schema
    if drop_first and target == settings.projection_schema:
        raise ValueError("the live schema is never dropped: name a fresh one")
    # UTF-8 whatever the database's encoding: a replay's decoder process formats text for COPY without a
    # connection to ask (recipients.copied), and in a LATIN1 database that text was stored as mojibake. The
    # server converts to the database's encoding, and refuses what it cannot hold, as it did before.
    conn = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True, client_encoding="UTF8")
    try:
        await conn.execute(read_models_ddl(target, drop_first=drop_first), prepare=False)
    except BaseException:
        await conn.close()
        raise
    return conn
