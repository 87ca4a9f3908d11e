"""An account's 24-hour sending quota (SES ``Max24HourSend``), kept by each worker between reads of the account.

SES counts every message sent in the last 24 hours (``SentLast24Hours``) and refuses sends past
``Max24HourSend``. Each read of the account (``GetAccount`` / ``GetSendQuota``, every few minutes) gives both
figures; between reads the worker adds what it reserves itself. When the next call would pass the quota the
account is, as ``OFFLOAD_SES_DAILY_QUOTA`` says, paused (calls wait until a read shows room again: SES's window
rolls, and a raised quota counts at once) or left for the local relay (:class:`DailyQuotaReached`, which makes
the batch fall back with the reason). Several workers split the room left at each read by their share of the
batch partitions, like the send rate, so together they stay within it. Calls wait for the worker's first read of
the account (answered or not): a worker started while the quota is used up, with a batch to serve at once (one
given up by a worker that stopped, say), must not send before it knows.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Literal

from adapters.email.base import ProviderUnavailable

log = logging.getLogger(__name__)

QuotaAction = Literal["pause", "local"]


class DailyQuotaReached(ProviderUnavailable):
    """The account's 24-hour quota is used up and the setting is to send the rest locally."""


class DailyQuota:
    def __init__(self, label: str, action: QuotaAction) -> None:
        self.label = label
        self.action = action
        self._max: float | None = None  # None: not known yet, or unlimited (SES answers -1)
        self._sent_at_read = 0.0
        self._reserved = 0  # messages this worker reserved since the last read
        self._share = 1.0
        self._changed = asyncio.Event()
        self.paused_by: str | None = None  # why calls wait, while they do
        self._pause = asyncio.Event()  # set while paused_by is
        self.waiting = 0  # calls waiting for room
        self._read = asyncio.Event()  # set once the account was first read, or the read went unanswered

    def update(self, max_24h: float, sent_last_24h: float) -> None:
        """A fresh read of the account: its figures replace what this worker counted since the last one."""
        self._max = max_24h if max_24h >= 0 else None
        self._sent_at_read, self._reserved = sent_last_24h, 0
        self._changed.set()
        self._changed = asyncio.Event()
        self._read.set()

    def unread(self) -> None:
        """A read of the account went unanswered: calls go on with what is known (before any read: no quota)."""
        self._read.set()

    def set_share(self, share: float) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"a worker's share of a quota must be in (0, 1], not {share}")
        self._share = share

    def room(self) -> float | None:
        """Messages this worker may still send before the next read (None: no quota known)."""
        if self._max is None:
            return None
        return max(0.0, (self._max - self._sent_at_read) * self._share - self._reserved)

    def reason(self) -> str:
        assert self._max is not None
        text = (f"{self.label} 24-hour quota reached: {self._sent_at_read + self._reserved:g} of Max24HourSend "
                f"{self._max:g} sent in the last 24 h")
        return text if self._share >= 1.0 else f"{text} (this worker's share {self._share:.0%})"

    async def take(self, wanted: int) -> int:
        """Reserve up to ``wanted`` messages of the quota: how many may go now (at least one).

        Waits for the first read of the account, then while there is no room (``pause``), or raises
        DailyQuotaReached (``local``)."""
        await self._read.wait()
        while True:
            room = self.room()
            if room is None or room >= 1:
                granted = wanted if room is None else min(wanted, math.floor(room))
                self._reserved += granted
                if self.paused_by is not None:
                    log.info("%s sends resume: the 24-hour quota has room again", self.label)
                    self.paused_by = None
                    self._pause.clear()
                return granted
            why = self.reason()
            if self.action == "local":
                raise DailyQuotaReached(why)
            if self.paused_by is None:
                log.warning("%s sends paused: %s; waiting for the next read of the quota", self.label, why)
            self.paused_by = why
            self._pause.set()
            self.waiting += 1
            try:
                await self._changed.wait()
            finally:
                self.waiting -= 1

    async def paused(self) -> str:
        """Why calls wait for room, once they do (at once if they wait already)."""
        while True:
            await self._pause.wait()
            if self.paused_by is not None:  # not resumed again before this waiter ran
                return self.paused_by
