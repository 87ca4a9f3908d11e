"""What a long-running process depends on (Postgres, Kafka, the SMTP relay ...), whether each is up now, and how
often it was lost and got back: the one record that ``/api/v1/health``, ``/metrics`` and the logs read.

Per process: the API records its own Postgres pool and Kafka producer, the projector its connection and
consumer. A metrics collector reads :func:`snapshot` (``offload_dependency_up``,
``offload_dependency_losses_total``, ``offload_dependency_reconnects_total``, labelled by dependency).

A dependency that is only used, never asked (the SMTP relay, a certificate store), would otherwise stay lost
until its next use, which on an idle worker may be hours after it came back: its reporter hands ``lost`` a
``recheck``, and :func:`recheck_lost` asks every lost one again until it answers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from resilience.backoff import backoff
from resilience.reasons import one_line

# Asks a lost dependency again: returns when it answers, raises (with the reason health should show) when not.
Recheck = Callable[[], Awaitable[None]]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DependencyState:
    name: str
    up: bool
    reason: str | None  # why it is down (None while up)
    since: float  # time.time() of the last change
    losses: int  # times it was lost
    reconnects: int  # times it came back after a loss


class Dependencies:
    """Thread-safe: the API's handlers and background tasks, and worker threads, may report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, DependencyState] = {}
        self._rechecks: dict[str, Recheck] = {}  # of the dependencies down now that can be asked again

    def track(self, name: str) -> None:
        """Name a dependency before its first report, so health lists it as up from the start."""
        with self._lock:
            self._states.setdefault(name, DependencyState(name, True, None, time.time(), 0, 0))

    def lost(self, name: str, reason: str, recheck: Recheck | None = None) -> None:
        """``name`` failed; the first report of an outage is logged and counted, repeats only update the reason.
        ``recheck``: how :func:`recheck_lost` asks it again until it is back (kept until then)."""
        with self._lock:
            if recheck is not None:
                self._rechecks[name] = recheck
            state = self._states.get(name) or DependencyState(name, True, None, time.time(), 0, 0)
            if state.up:
                log.warning("%s lost: %s", name, reason)
                state = replace(state, up=False, reason=reason, since=time.time(), losses=state.losses + 1)
            else:
                state = replace(state, reason=reason)
            self._states[name] = state

    def restored(self, name: str) -> None:
        """``name`` answered again; counted as a reconnect if it had been lost."""
        with self._lock:
            self._rechecks.pop(name, None)
            state = self._states.get(name)
            if state is None:
                self._states[name] = DependencyState(name, True, None, time.time(), 0, 0)
                return
            if not state.up:
                log.warning("%s is back after %.1f s", name, time.time() - state.since)
                self._states[name] = replace(state, up=True, reason=None, since=time.time(),
                                             reconnects=state.reconnects + 1)

    def snapshot(self) -> dict[str, DependencyState]:
        with self._lock:
            return dict(self._states)

    def down(self) -> dict[str, str]:
        """The dependencies down now, with why."""
        return {name: s.reason or "unavailable" for name, s in self.snapshot().items() if not s.up}

    def rechecks(self) -> dict[str, Recheck]:
        """The dependencies down now that can be asked again, with how."""
        with self._lock:
            return {name: check for name, check in self._rechecks.items() if not self._states[name].up}


# One record per process.
DEPENDENCIES = Dependencies()


async def recheck_lost(dependencies: Dependencies, interval: float, timeout: float) -> None:
    """Every ``interval`` seconds, ask each lost dependency that has a recheck again (waiting up to ``timeout``
    seconds for each, one after another) and record the answer, until cancelled.

    A recheck with no answer in time is left running, not cancelled, and is not asked again until it answers: a
    check that waits in a thread (an S3 request, a write to a hung network disk) goes on there whatever
    happens to its coroutine, and starting one every interval would pile the threads up behind it."""
    asking: dict[str, asyncio.Future[None]] = {}
    try:
        while True:
            await asyncio.sleep(interval)
            wanted = dependencies.rechecks()
            for name in [n for n, task in asking.items() if n not in wanted and task.done()]:
                _retrieved(asking.pop(name))  # back through use meanwhile: its answer is not needed
            for name, recheck in wanted.items():
                task = asking.get(name)
                if task is None:
                    task = asking[name] = asyncio.ensure_future(recheck())
                done, _ = await asyncio.wait({task}, timeout=timeout)
                if not done:
                    dependencies.lost(name, f"no answer within {timeout:g} s")
                    continue
                del asking[name]
                failure = _retrieved(task)
                if failure is None:
                    dependencies.restored(name)
                else:  # any failure is no answer: the watch goes on, and says so
                    dependencies.lost(name, one_line(str(failure) or type(failure).__name__, 500))
    finally:
        for task in asking.values():
            task.cancel()


def _retrieved(task: asyncio.Future[None]) -> BaseException | None:
    """The task's error (a cancelled one's too), retrieved so that asyncio does not log it as never retrieved."""
    return asyncio.CancelledError() if task.cancelled() else task.exception()


def snapshot() -> dict[str, DependencyState]:
    """Every dependency of this process: up or not, losses and reconnects so far (for metrics collectors)."""
    return DEPENDENCIES.snapshot()


class Backoff:
    """Waits between reconnect attempts: exponential from ``base`` to ``cap`` seconds, with equal jitter (half
    fixed, half random) so several processes coming back do not all knock at the same instant."""

    def __init__(self, base: float = 0.5, cap: float = 15.0, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self._rng = rng or random.Random()
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return backoff(self.failures, base=self.base, cap=self.cap, jitter="equal", rng=self._rng)

    def reset(self) -> None:
        self.failures = 0
