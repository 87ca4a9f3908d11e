"""``offload worker`` whose table recovery loses its fetch position on the job-progress changelog, for the tests
of streams.recovery_watch: ``python -m tests.support.losing_worker first|every``.

After a seek of an active job-progress changelog partition with records left, the consumer is moved on to the
partition's end, and Faust's read offset is put back: the state the CI worker of 2026-12-01 was left in when
aiokafka had drained those records into a poll that Faust then dropped (docs/troubleshooting.md). ``first`` loses
only recovery's own seek (a fetch from the applied offset mends it); ``every`` loses every seek (nothing does).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

from faust.transport.consumer import ThreadDelegateConsumer
from faust.types import TP

from offload.cli import main

log = logging.getLogger("losing_worker")
SUFFIX = "-job-progress-changelog"
_real_seek_wait = ThreadDelegateConsumer.seek_wait


def lose(when: str) -> None:
    lost: list[TP] = []

    async def seek_wait(self: ThreadDelegateConsumer, partitions: Mapping[TP, int]) -> None:
        await _real_seek_wait(self, partitions)
        if when == "first" and lost:
            return
        recovery = self.app.tables.recovery
        remaining = recovery.active_remaining() if recovery.in_recovery else {}
        ends = {tp: recovery.active_highwaters[tp] + 1 for tp in partitions
                if tp.topic.endswith(SUFFIX) and remaining.get(tp, 0) > 0}
        if not ends:
            return
        read_offsets = {tp: self._read_offset.get(tp) for tp in ends}
        await _real_seek_wait(self, ends)
        self._read_offset.update(read_offsets)  # Faust never saw the records it lost
        lost.extend(ends)
        log.warning("test: recovery lost its fetch position on %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in ends))

    ThreadDelegateConsumer.seek_wait = seek_wait  # type: ignore[method-assign]


if __name__ == "__main__":
    lose(sys.argv[1])
    raise SystemExit(main(["worker", "-l", "info"]))
