"""The projector's ``/health`` and ``/metrics`` (``OFFLOAD_HEALTH_PORT``, :mod:`resilience.probe`).

The projector records Postgres and Kafka in its dependency record as its reads and writes fail and succeed
(:mod:`projections.projector`); an idle consumer does not notice a broker gone, so the broker is also asked every
``OFFLOAD_HEALTH_INTERVAL`` seconds (:mod:`eventlog.broker_ping`). A replay (``--until-caught-up``) serves none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from config.settings import Settings
from eventlog.broker_ping import watch_broker
from resilience.dependencies import DEPENDENCIES
from resilience.probe import probe_for


@contextlib.asynccontextmanager
async def served(settings: Settings, serving: Callable[[], bool]) -> AsyncIterator[None]:
    """Health and metrics while the block runs, when ``settings.health_port`` names a port; ``starting`` until
    ``serving()`` (the projector has created its read models and positioned its partitions)."""
    if settings.health_port == 0:
        yield
        return
    probe = probe_for("projector", settings, serving=serving)
    await probe.start()  # a port already taken stops the projector: it should not run unwatched
    broker = asyncio.create_task(watch_broker(settings.kafka_bootstrap_servers, DEPENDENCIES,
                                              settings.health_interval))
    try:
        yield
    finally:
        broker.cancel()
        await asyncio.gather(broker, return_exceptions=True)
        await probe.stop()
