"""Shared shapes of the projections: an event with its place in the log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.events import Event


@dataclass(frozen=True, slots=True)
class Position:
    topic: str
    partition: int
    offset: int
    timestamp: datetime  # the record's Kafka timestamp: read models take time from the log, never from now()


Applied = tuple[Position, Event]
