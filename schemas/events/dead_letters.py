"""Records the worker could not decode or process (topic ``dead-letters``), kept with their original bytes."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AwareDatetime, Field

from schemas.events.base import Event, utcnow


class DeadLettered(Event):
    """A record that could not be decoded or processed, kept with its original bytes and the error."""

    ce_type: ClassVar[str] = "org.manireports.offload.dead-lettered.v1"
    topic: ClassVar[str] = "dead-letters"

    source_topic: str
    source_partition: int
    source_offset: int
    key_b64: str | None
    value_b64: str
    headers: dict[str, str] = Field(default_factory=dict)
    error: str
    stage: str = Field(description="which agent gave up on it")
    dead_lettered_at: AwareDatetime = Field(default_factory=utcnow)

    def subject(self) -> str:
        return f"{self.source_topic}/{self.source_partition}/{self.source_offset}"
