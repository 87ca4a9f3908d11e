"""The cyclic garbage collector, set for processes that run for months over many short-lived objects.

Python frees almost everything by reference counting; the cyclic collector only finds groups of objects that
refer to each other. It runs after every 700 more container objects made than freed (its young generation), and
each run scans every object that has survived so far in that generation. A worker sending 2,000 learners a second
makes tens of thousands of such objects a second, most alive for a fraction of a second (a batch's recipients,
its messages, the outcomes on their way), so with the defaults they outlive two young collections, land in the
old generation and make it grow by a quarter every few seconds: then Python scans the whole heap. Measured in the
worker during a 50,000-learner job (docs/benchmarks.md, "The worker's garbage collector"): 15 full collections of
100-190 ms each, the event loop and every SMTP session standing still meanwhile, 2.4-2.8 s of CPU in all (a
reference cycle per batch, since broken, gave them most of their garbage).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Container objects made (net) before a young collection. At this size most of a batch's objects are freed by
# reference counting before any collection sees them, so few reach the old generation and it is not scanned whole
# while the worker sends; a young collection took 0.15 ms on average in the job above (at most 6 ms).
YOUNG_GENERATION = 10_000


def collect_for_throughput() -> tuple[int, int, int]:
    """Freeze what is alive now (modules, the app, pydantic's validators: they live as long as the process) out
    of the collector's sight, and let the young generation grow to ``YOUNG_GENERATION`` before it is collected.
    Cyclic garbage is still found, in young collections rather than full ones. Returns the thresholds set."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION, middle, old)
    return gc.get_threshold()


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection while a stretch of code makes many objects that all stay alive (a 50,000-learner job
    parsed and validated: ~10^5 objects; a poll of events decoded until its commit): every collection they
    triggered would find nothing to free and, once enough had survived, scan the whole heap again. Reference
    counting frees them as usual; the collector runs again on the next allocations after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
