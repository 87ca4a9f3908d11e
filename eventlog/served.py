"""A process's ``/health`` and ``/metrics`` (``OFFLOAD_HEALTH_PORT``, :mod:`resilience.probe`) with its broker
watched (:mod:`eventlog.broker_ping`): one pairing for the worker (:mod:`streams.health`) and the projector
(``offload projector``).

Each process fills the rest of its dependency record where it uses a dependency: the projector Postgres and Kafka
as its reads and writes fail and succeed (:mod:`projections.projector`); the worker the SMTP relay, each cloud
provider account, each Moodle host, certificate storage and its table recovery. An idle consumer does not notice
a broker gone, so the broker is also asked every ``OFFLOAD_HEALTH_INTERVAL`` seconds; so is every dependency
that is lost and can be asked again (:func:`resilience.dependencies.recheck_lost`). Kept apart from the ping so
that the publisher, which the API's health asks through :func:`eventlog.broker_ping.ask_metadata`, does not
import the HTTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from config.settings import Settings
from eventlog.broker_ping import PING_TIMEOUT, watch_broker
from resilience.dependencies import DEPENDENCIES, Dependencies, recheck_lost
from resilience.probe import probe_for


@contextlib.asynccontextmanager
async def served(process: str, settings: Settings, serving: Callable[[], bool],
                 dependencies: Dependencies = DEPENDENCIES) -> AsyncIterator[None]:
    """``process``'s health and metrics while the block runs, with the broker watched, when
    ``settings.health_port`` names a port; ``starting`` until ``serving()`` (the worker: its first table recovery
    is done; the projector: its read models exist and its partitions are positioned)."""
    if settings.health_port == 0:
        yield
        return
    probe = probe_for(process, settings, serving=serving, dependencies=dependencies)
    await probe.start()  # a port already taken stops the process: it should not run unwatched
    watches = [asyncio.create_task(watch_broker(settings.kafka_bootstrap_servers, dependencies,
                                                settings.health_interval)),
               asyncio.create_task(recheck_lost(dependencies, settings.health_interval, PING_TIMEOUT))]
    try:
        yield
    finally:
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        await probe.stop()
