"""A watch over Faust's table recovery: an active changelog partition that stops moving gets fetched again, and
a worker whose recovery still does not move exits so that its supervisor restarts it.

Why (docs/troubleshooting.md, "A worker's table recovery never finishes"): Faust pauses and resumes partitions
only in its own bookkeeping (``Consumer._active_partitions``), never in aiokafka, and hands that live set to
aiokafka's ``fetched_records``, which reads an *empty* set as "every partition" and advances the position of
whatever it returns. Records of an active changelog partition drained while Faust's set is empty (between
``pause_partitions(assigned)`` and ``resume_partitions(active_tps)`` of a rebalance), or while its flow is stopped,
are dropped by Faust's ``getmany`` after aiokafka moved past them. Recovery then waits for offsets that will never
be fetched again: "No event received for active tp ... since recovery start" every 5 s, for ever.

The remedy, least drastic first: seek the partitions that have not moved for ``recovery_stall_seconds`` back to
the offset recovery last applied (what Faust's own recovery seeks to; an event read twice is ignored because
recovery applies only offsets above the one it holds). If they still do not move for as long again, the worker
logs one line and exits with :data:`EXIT_RECOVERY_STALLED`; the group rebalances and the restarted worker
recovers from scratch. A broker that does not answer is never a stall: the watch asks the broker for the
partitions' ends first and waits while it cannot (reconnecting is aiokafka's and the back-off's job).

:class:`RecoveryWatch` decides (pure, tested in tests/unit/test_recovery_watch.py against Faust's own
``Recovery``); :class:`RecoveryWatchService` runs it in the worker, from its start.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import faust
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP
from mode import Service

from resilience.dependencies import DEPENDENCIES

log = logging.getLogger(__name__)

EXIT_RECOVERY_STALLED = 75  # EX_TEMPFAIL: the supervisor should start the worker again
DEPENDENCY = "table recovery"  # the name in the process's dependency record (resilience.dependencies)


class Action(enum.Enum):
    WAIT = "wait"  # every partition with records left moved recently (or recovery is not running)
    RESEEK = "reseek"  # some have not moved for stall_seconds: fetch them again from the applied offset
    EXIT = "exit"  # some have not moved for stall_seconds since they were fetched again


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    stalled: Mapping[TP, int] = field(default_factory=dict)  # partition -> offset recovery last applied


@dataclass(slots=True)
class _Track:
    offset: int
    since: float  # when the offset last moved (or the partition was first seen in this recovery)
    reseeked: bool = False


class RecoveryWatch:
    """Follows one worker's recovery from tick to tick; :meth:`decide` says what to do now."""

    def __init__(self, stall_seconds: float) -> None:
        if stall_seconds <= 0:
            raise ValueError("stall_seconds must be positive")
        self.stall_seconds = stall_seconds
        self._started_at: float | None = None  # the recovery being watched (Faust's start time of it)
        self._tracks: dict[TP, _Track] = {}

    def decide(self, recovery: Recovery, now: float) -> Decision:
        """What to do about ``recovery`` at monotonic time ``now``."""
        # Faust's Recovery keeps its start time in a private attribute; a new recovery (a rebalance during one
        # included) starts the watch over, so a partition is judged only on the recovery that fetches it.
        started_at = recovery._recovery_started_at
        if not recovery.in_recovery or started_at != self._started_at:
            self._tracks.clear()
            self._started_at = started_at if recovery.in_recovery else None
        if not recovery.in_recovery:
            return Decision(Action.WAIT)
        remaining = recovery.active_remaining()
        offsets = recovery.active_offsets
        for tp in list(self._tracks):
            if tp not in remaining or remaining[tp] <= 0:
                del self._tracks[tp]  # no longer active, or caught up
        stalled: dict[TP, int] = {}
        exit_now = False
        for tp, left in remaining.items():
            if left <= 0:
                continue
            offset = offsets[tp]
            track = self._tracks.get(tp)
            if track is None or track.offset != offset:
                self._tracks[tp] = _Track(offset, now)  # moved: a later stop is a new one, mended gently again
                continue
            if now - track.since >= self.stall_seconds:
                stalled[tp] = offset
                exit_now = exit_now or track.reseeked
        if not stalled:
            return Decision(Action.WAIT)
        return Decision(Action.EXIT if exit_now else Action.RESEEK, stalled)

    def reseeked(self, tps: Mapping[TP, int], now: float) -> None:
        """``tps`` were fetched again at ``now``: each gets ``stall_seconds`` more before the worker gives up."""
        for tp, offset in tps.items():
            self._tracks[tp] = _Track(offset, now, reseeked=True)

    def broker_silent(self, now: float) -> None:
        """The broker did not answer: an outage is not a stall, so every partition's clock starts again."""
        for track in self._tracks.values():
            track.since = now


def describe(stalled: Mapping[TP, int], recovery: Recovery) -> str:
    highwaters = recovery.active_highwaters
    return ", ".join(f"{tp.topic}[{tp.partition}] at {offset} of {highwaters[tp]}"
                     for tp, offset in sorted(stalled.items()))


def exit_stalled(stalled: Mapping[TP, int], recovery: Recovery, stall_seconds: float) -> None:
    """Say why in one line, then leave at once: Faust's orderly stop waits on the very recovery that hangs."""
    DEPENDENCIES.lost(DEPENDENCY, f"no progress on {describe(stalled, recovery)}")
    log.critical("table recovery stalled: %s; no progress %.0f s after fetching them again: exiting (code %d) so "
                 "that the worker is restarted and the group rebalances", describe(stalled, recovery), stall_seconds,
                 EXIT_RECOVERY_STALLED)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_RECOVERY_STALLED)


class RecoveryWatchService(Service):
    """Runs the watch from the worker's start: Faust starts its own timers only once the first recovery is
    done, and that recovery can stall as well as one after a rebalance."""

    def __init__(self, app: faust.App, stall_seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.stall_seconds = stall_seconds
        self.watch = RecoveryWatch(stall_seconds)
        self.interval = min(5.0, stall_seconds / 4)

    @Service.task
    async def _watch_recovery(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            if not self.should_stop:
                await self.tick()

    async def tick(self) -> None:
        app, watch = self.app, self.watch
        recovery = cast(TableManager, app.tables).recovery  # typed as TableManagerT, which has no recovery
        loop = asyncio.get_running_loop()
        decision = watch.decide(recovery, loop.time())
        if decision.action is Action.WAIT:
            if not recovery.in_recovery:
                DEPENDENCIES.restored(DEPENDENCY)
            return
        stalled = decision.stalled
        try:  # does the broker answer? (ListOffsets for the stalled partitions)
            await asyncio.wait_for(app.consumer.highwaters(*stalled), timeout=app.conf.broker_request_timeout)
        except Exception as exc:  # noqa: BLE001 - any failure to answer is an outage here, not a stall
            log.warning("table recovery has not moved on %s, but the broker does not answer (%s): waiting",
                        describe(stalled, recovery), type(exc).__name__)
            watch.broker_silent(loop.time())
            return
        if decision.action is Action.EXIT:
            exit_stalled(stalled, recovery, self.stall_seconds)
        DEPENDENCIES.lost(DEPENDENCY, f"no progress on {describe(stalled, recovery)}")
        log.warning("table recovery has not moved for %.0f s on %s: fetching them again from there",
                    self.stall_seconds, describe(stalled, recovery))
        await app.consumer.seek_wait({tp: max(offset, 0) for tp, offset in stalled.items()})
        watch.reseeked(stalled, loop.time())


def register(app: faust.App, stall_seconds: float) -> None:
    """Watch ``app``'s recovery every few seconds from its start; ``stall_seconds`` 0 leaves it unwatched."""
    if stall_seconds <= 0:
        return
    DEPENDENCIES.track(DEPENDENCY)
    app.add_dependency(RecoveryWatchService(app, stall_seconds, beacon=app.beacon))
