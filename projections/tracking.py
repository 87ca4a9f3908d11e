"""Where each projection stands in each topic partition, stored in the same transaction as its row changes."""

from __future__ import annotations

from psycopg import AsyncCursor

DDL = """
CREATE TABLE IF NOT EXISTS projection_offsets (
    projection  text   NOT NULL,
    topic       text   NOT NULL,
    partition   int    NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);
"""


async def load(cur: AsyncCursor, projection: str) -> dict[tuple[str, int], int]:
    await cur.execute(
        "SELECT topic, partition, next_offset FROM projection_offsets WHERE projection = %s", (projection,)
    )
    return {(topic, partition): offset for topic, partition, offset in await cur.fetchall()}


async def save(cur: AsyncCursor, projection: str, positions: dict[tuple[str, int], int]) -> None:
    if not positions:
        return
    rows = [(projection, topic, partition, offset) for (topic, partition), offset in positions.items()]
    await cur.executemany(
        """INSERT INTO projection_offsets (projection, topic, partition, next_offset) VALUES (%s, %s, %s, %s)
           ON CONFLICT (projection, topic, partition)
           DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()""",
        rows,
    )
