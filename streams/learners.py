"""A job's learners as the route agent cuts them into batches: a list in memory for a job sent whole, or read
back chunk by chunk from the log for a job sent in parts (streams.chunked_jobs), so no process ever holds the
learners of a job of any size at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from schemas.events import Recipient
from schemas.intake import batches


class Learners(Protocol):
    @property
    def count(self) -> int:
        """How many learners will be served (repeats already removed)."""
        ...

    def batches(self, size: int) -> AsyncIterator[list[Recipient]]:
        """Consecutive batches of ``size`` learners (the last may be shorter), the same ones every time."""
        ...


class ListedLearners:
    """The learners of a job sent in one record, already validated and de-duplicated."""

    def __init__(self, recipients: Sequence[Recipient]) -> None:
        self._recipients = recipients

    @property
    def count(self) -> int:
        return len(self._recipients)

    async def batches(self, size: int) -> AsyncIterator[list[Recipient]]:
        for batch in batches(self._recipients, size):
            yield batch
