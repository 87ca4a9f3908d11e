"""Shared shapes of the projections: an event with its place in the log."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import Event


@dataclass(frozen=True, slots=True)
class Position:
    topic: str
    partition: int
    offset: int


Applied = tuple[Position, Event]
