"""The worker's ``/health`` and ``/metrics`` (``OFFLOAD_HEALTH_PORT``), and the broker ping that feeds them.

The worker's dependency record (:mod:`resilience.dependencies`) is filled where each dependency is used: the SMTP
relay by its sessions (``adapters.email.smtp``), each cloud provider account by its circuit breaker, the
table recovery by :mod:`streams.recovery_watch`, DKIM's DNS by its check; Kafka by a ping of its own
(:mod:`eventlog.broker_ping`) every ``OFFLOAD_HEALTH_INTERVAL`` seconds. The worker is ``starting`` until its
first table recovery is done (Faust's "Worker: Ready"). Both run from the worker's start, before that recovery,
as the recovery watch does.
"""

from __future__ import annotations

from typing import Any, cast

import faust
from faust.tables.manager import TableManager
from mode import Service

from config.settings import Settings
from eventlog.broker_ping import watch_broker
from resilience.dependencies import DEPENDENCIES
from resilience.probe import probe_for


class WorkerHealth(Service):
    def __init__(self, app: faust.App, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.settings = settings
        self.probe = probe_for("worker", settings, serving=self.recovered)

    def recovered(self) -> bool:
        """Faust's first table recovery is done (it logs "Worker: Ready" then)."""
        return cast(TableManager, self.app.tables).recovery.completed.is_set()

    async def on_start(self) -> None:
        await self.probe.start()  # a port already taken stops the worker: it should not run unwatched

    async def on_stop(self) -> None:
        await self.probe.stop()

    @Service.task
    async def _watch_broker(self) -> None:
        await watch_broker(self.settings.kafka_bootstrap_servers, DEPENDENCIES, self.settings.health_interval)


def register(app: faust.App, settings: Settings) -> None:
    """Serve the worker's health and metrics on ``settings.health_port`` (0: not served)."""
    if settings.health_port != 0:
        app.add_dependency(WorkerHealth(app, settings, beacon=app.beacon))
