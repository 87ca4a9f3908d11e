"""The worker's ``/health`` and ``/metrics`` (``OFFLOAD_HEALTH_PORT``), served by :func:`eventlog.served.served`.

The worker's dependency record (:mod:`resilience.dependencies`) is filled where each dependency is used: the SMTP
relay by its sessions (``adapters.email.smtp``), each cloud provider account by its circuit breaker, each Moodle
host by the callback scheduler, certificate storage by the certificate handler, the table recovery by
:mod:`streams.recovery_watch`, DKIM's DNS by its check; Kafka by a ping of its own (:mod:`eventlog.broker_ping`)
every ``OFFLOAD_HEALTH_INTERVAL`` seconds. The worker is ``starting`` until its first table recovery is done
(Faust's "Worker: Ready"). Both run from the worker's start, before that recovery, as the recovery watch does.
"""

from __future__ import annotations

import contextlib
from typing import Any, cast

import faust
from faust.tables.manager import TableManager
from mode import Service

from config.settings import Settings
from eventlog.served import served


class WorkerHealth(Service):
    def __init__(self, app: faust.App, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.settings = settings
        self._served = contextlib.AsyncExitStack()

    def recovered(self) -> bool:
        """Faust's first table recovery is done (it logs "Worker: Ready" then)."""
        return cast(TableManager, self.app.tables).recovery.completed.is_set()

    async def on_start(self) -> None:
        # A port already taken stops the worker here: it should not run unwatched.
        await self._served.enter_async_context(served("worker", self.settings, serving=self.recovered))

    async def on_stop(self) -> None:
        await self._served.aclose()


def register(app: faust.App, settings: Settings) -> None:
    """Serve the worker's health and metrics on ``settings.health_port`` (0: not served)."""
    if settings.health_port != 0:
        app.add_dependency(WorkerHealth(app, settings, beacon=app.beacon))
