"""Read-model rows written as the projector could leave them, for tests of what the readers show."""

from __future__ import annotations

from config.settings import Settings
from projections.read_models import open_read_models


async def write(settings: Settings, statement: str, params: tuple = ()) -> None:
    """Run one statement on the test's read models (their tables created first) and commit it."""
    conn = await open_read_models(settings)
    try:
        await conn.execute(statement, params)
        await conn.commit()
    finally:
        await conn.close()
