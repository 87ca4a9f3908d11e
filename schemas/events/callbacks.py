"""Callbacks to Moodle (topic ``callbacks``): each attempt that reached it, or did not."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field

from schemas.events.base import Event, utcnow

# "paused"/"resumed": the job was paused on its bounce/complaint rate, and resumed; "rejected": a chunked job
# closed for staying open without a commit (added after v1 began).
CallbackName = Literal["started", "progress", "completed", "unsubscribed", "paused", "resumed", "rejected"]


class CallbackDelivered(Event):
    """Moodle answered a signed callback with 2xx: this callback is done."""

    ce_type: ClassVar[str] = "org.manireports.offload.callback.delivered.v1"
    topic: ClassVar[str] = "callbacks"

    job_id: str
    callback_id: str = Field(description="job_id:run:name, the same for every attempt of one callback")
    event: CallbackName
    run: int = 0
    milestone: int | None = Field(default=None, description="percent, for progress callbacks")
    attempt: int = Field(ge=1)
    status: int = Field(description="Moodle's HTTP status")
    duration_ms: int
    delivered_at: AwareDatetime = Field(default_factory=utcnow)


class CallbackFailed(Event):
    """One attempt that did not reach Moodle; next_attempt_at is when it is tried again, None when given up."""

    ce_type: ClassVar[str] = "org.manireports.offload.callback.failed.v1"
    topic: ClassVar[str] = "callbacks"

    job_id: str
    callback_id: str = Field(description="job_id:run:name, the same for every attempt of one callback")
    event: CallbackName
    run: int = 0
    milestone: int | None = None
    attempt: int = Field(ge=1)
    status: int | None = Field(default=None, description="Moodle's HTTP status; None when no answer came")
    error: str = Field(max_length=2000)
    next_attempt_at: AwareDatetime | None = None
    duration_ms: int | None = None
    failed_at: AwareDatetime = Field(default_factory=utcnow)
