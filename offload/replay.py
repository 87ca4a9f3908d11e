"""Rebuild every read model from offset 0 into a fresh schema, for analysts and for recovery."""

from __future__ import annotations

from config.settings import Settings
from projections.projector import Projector, ProjectorStats


async def replay(settings: Settings, schema: str) -> ProjectorStats:
    """Drop ``schema`` if it exists, then project the whole log into it and stop once caught up.

    The schema is dropped in the transaction that creates the read models again, on the projector's own
    connection, while its consumer starts (projections/startup.py)."""
    if schema == settings.projection_schema:
        raise ValueError("replay into the live schema is refused: name a fresh one")
    return await Projector(settings, schema=schema, fresh=True).run(until_caught_up=True)
