"""One poll of the worker's consumer that hands over no records while a rebalance is under way.

Faust calls aiokafka's ``Fetcher.fetched_records(partitions, timeout)`` with its *live* set of active partitions
(``Consumer._active_partitions``) and waits there up to a second. While it waits, a rebalance empties that set
(``on_partitions_revoked``, then ``pause_partitions(assigned)`` until recovery resumes its changelogs) and stops
Faust's flow; aiokafka reads an empty set as "every partition", hands over whatever it holds and moves each
partition's position past it, and Faust drops what arrives while its flow is stopped or for a partition it no
longer reads. For a stream partition Faust seeks back to the committed offset, if it has one; for an active
changelog partition that recovery has just sought, nothing does: its records are never fetched again and recovery
waits for them for ever (the CI stall of 2026-12-01, docs/troubleshooting.md).

:func:`poll` waits for records without taking any, and takes them (aiokafka's own ``fetched_records`` with no
wait) only after checking, on the consumer's event loop and with no await in between, that Faust's flow runs, no
reassignment is under way and Faust's set is not empty. During a rebalance Faust's set is empty only while its
flow is stopped (from ``on_partitions_revoked`` until recovery's ``resume_flow()``), so that is the window closed
here; an empty set with the flow running takes nothing either (Faust's own poll never asks with one, "to avoid the
risk of fetching all partitions", but the set it handed over could empty while aiokafka waited).

And until a rebalance has ended (``app.rebalancing``), records of stream partitions are not taken, only those of
changelogs (recovery's). At the end of its recovery Faust resumes the stream partitions, then seeks them to their
committed offsets (``perform_seek``: one committed-offset request per partition, about a second on a loaded
machine), then ends the rebalance; records taken during that wait were never served, and the same records read
again after the seek were dropped as already read (``DROPPED MESSAGE ROFF``). Seen in
``tests/integration/test_worker_crash.py`` under load (about one run in six), with log lines added to Faust for
the hunt: the restarted worker skipped up to a dozen batches per partition, the half-done one among them, and
served them only when the stall sweep sent them again; watch-delivery's outcome records were dropped the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Set
from typing import Any

from aiokafka.consumer.fetcher import Fetcher
from aiokafka.errors import ConsumerStoppedError


async def poll(fetcher: Fetcher, live_partitions: Set[Any], flow_active: Callable[[], bool], *,
               timeout: float | None, max_records: int | None, streams_ready: Callable[[], bool] = lambda: True,
               changelogs: Collection[str] = ()) -> dict[Any, list[Any]]:
    """Records of the partitions in ``live_partitions`` (Faust's set, read now), waiting up to ``timeout`` s;
    while ``streams_ready`` says no (a rebalance under way: Faust's ``app.rebalancing``), only those of
    ``changelogs`` topics."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (timeout or 0.0)
    while True:
        if fetcher._closed:
            raise ConsumerStoppedError()
        if not flow_active() or fetcher._subscriptions.reassignment_in_progress:
            return {}
        partitions = set(live_partitions)  # one copy, made under the GIL, of a set the event loop's thread changes
        if not streams_ready():  # until Faust's rebalance ends, stream records are taken only to be lost
            partitions = {tp for tp in partitions if tp.topic in changelogs}
        if not partitions:  # aiokafka reads an empty set as every partition: none is active, so none is read
            return {}
        # Not reassigning, so fetched_records does not wait: it drains what it holds for these partitions now.
        records: dict[Any, list[Any]] = await fetcher.fetched_records(partitions, timeout=0,
                                                                      max_records=max_records)
        remaining = deadline - loop.time()
        if records or remaining <= 0:
            return records
        waiter = fetcher._create_fetch_waiter()  # set when the fetcher adds records (or fails)
        done, _ = await asyncio.wait([waiter], timeout=remaining)
        if not done:
            waiter.cancel()
            return {}
        waiter.result()  # an authorization error is raised, as fetched_records raises it
