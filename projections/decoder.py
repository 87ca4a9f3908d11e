"""A replay's decoder process: a piece's outcomes and batches decoded, and their rows built, beside the projector.

Catching up, the projector decoded a piece and committed the one before it in turns, never at once: decoding
never waits, so the commit (a task) ran only when the loop next waited, and the two shared one interpreter lock
either way (a decoding thread was measured: no faster). Outcomes and first-run batches are nearly all of a log
(50,250 of a 50,000-learner job's 50,503 events) and only job_recipients reads them, so this process decodes
them and sends back only their rows while the projector waits on it, and meanwhile its previous piece commits.
Decoded events do not cross: pickling one costs more than decoding it again (6-16 µs against 3-4 µs). The rows
cross already formatted for COPY, one bytes object per table (recipients.copied): as tuples, pickling them here,
unpickling them in the projector and formatting them there for COPY took ~40 ms per 5,000 outcomes, ~6 ms
formatted here.

The process is forked when a replay starts: spawned, it would import the schemas, pydantic and psycopg again
(~0.6 s, more than a 50,000-learner replay's whole decoding). The live projector decodes in its own process.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import signal
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from projections import recipients
from resilience.reasons import reason
from schemas.envelope import UndecodableRecord, decode
from schemas.events import Event

log = logging.getLogger(__name__)

# A record's value and its ce_type header: all the decoding needs of an outcome. Its whole headers crossed at
# first, and pickling them (seven pairs) cost the projector more than decoding the outcome (py-spy).
Raw = tuple[bytes | None, bytes | None]


# The learners this process's outcomes have written so far (recipients.Written), for the length of one replay.
_written = recipients.Written()


def _child_setup(fresh: bool) -> None:
    global _written
    _written = recipients.Written(fresh=fresh)  # nothing from the parent's copy
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the projector's to handle; it stops this process
    gc.disable()  # as in the projector catching up: a piece's objects hold no cycles, reference counting frees them


def _decoded(records: Sequence[Raw]) -> Iterator[Event | None]:
    for value, ce_type in records:
        try:
            yield decode(value, (("ce_type", ce_type),) if ce_type is not None else ())
        except UndecodableRecord:
            yield None  # the projector decodes it again, then logs and counts it as it does any other


def build(records: Sequence[Raw]) -> tuple[recipients.Copied, list[int]]:
    """recipients.build over the decoded records: the rows of the outcomes and first-run batches, formatted for
    COPY (recipients.copied: one bytes object per table crosses back), and the places in ``records`` of the
    others (reports, retry runs' batches, undecodable records), which the projector decodes itself. Pending rows
    of learners an earlier piece's outcome writes are left out (recipients.Written): pieces reach this process
    in the order they commit."""
    built, others = recipients.build(_decoded(records), _written)
    return recipients.copied(built), others


class Decoder:
    """One decoder process for the length of a replay."""

    def __init__(self, pool: ProcessPoolExecutor, first: Future[int]) -> None:
        self._pool: ProcessPoolExecutor | None = pool
        self._first = first  # the process's first call: answered once it runs

    @classmethod
    def forked(cls, *, fresh: bool) -> Decoder | None:
        """The process forked now (call it before opening connections or starting threads); None where fork is
        not available or fails: the projector then decodes everything itself. ``fresh``: the replay writes into
        a schema it dropped, and only this process builds rows of learners (recipients.Written).

        Only the fork waits here (a fork pool starts its process at the first submit): the process starting up
        runs beside the projector's own start-up, and ``started`` says whether it did."""
        pool = None
        try:
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), initializer=_child_setup,
                                       initargs=(fresh,))
            with warnings.catch_warnings():
                # Python 3.12+ warns when a process with threads forks (an idle executor thread from resolving
                # the database's host, a test's servers): the child could deadlock on a lock one of them held.
                # This child takes none of theirs: it decodes, builds rows and talks to its parent by its pipes.
                warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks",
                                        category=DeprecationWarning)
                first = pool.submit(int)  # forked here, not at the first piece
        except (ValueError, OSError, BrokenProcessPool) as exc:
            log.warning("replay decodes in one process: no decoder process (%s)", reason(exc))
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            return None
        return cls(pool, first)

    async def started(self, timeout: float = 30.0) -> bool:
        """Whether the process answered its first call within ``timeout`` s; if not, it is closed (and the
        projector decodes everything itself)."""
        if self._pool is None:
            return False
        try:
            # Shielded: a start-up that is cancelled (its other side failed) and tried again awaits the same call.
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._first)), timeout)
        except (BrokenProcessPool, TimeoutError) as exc:
            log.warning("replay decodes in one process: the decoder process did not start (%s)", reason(exc))
            if self._pool is not None:
                # Not waited for: a process that did not answer in time may not answer a shutdown either.
                self._pool.shutdown(wait=not isinstance(exc, TimeoutError), cancel_futures=True)
                self._pool = None
            return False
        return True

    def build(self, records: Sequence[Raw]) -> asyncio.Future[tuple[recipients.Copied, list[int]]]:
        """build(records), sent to the decoder process now; the future raises BrokenProcessPool if the process
        died."""
        assert self._pool is not None, "closed"
        return asyncio.get_running_loop().run_in_executor(self._pool, build, records)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
