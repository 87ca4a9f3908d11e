"""``GET /health`` and ``GET /metrics`` of a process with no HTTP API of its own: the worker and the projector.

Both read this process's dependency record (:mod:`resilience.dependencies`) and nothing else, so they answer at
once even while a dependency hangs; what fills the record (a broker ping, the SMTP relay's sessions, a provider's
circuit, the table recovery watch) runs elsewhere. ``/health`` answers 200 while the process can answer at all,
with ``status`` ``starting`` (not yet serving: the worker's first table recovery, the projector's read models
and partitions), ``ready`` or ``degraded`` and
the reasons, as the API's ``/api/v1/health`` does; a supervisor's check that gets no answer within its timeout
has found a process whose event loop is stuck. ``/metrics`` is the Prometheus text format: the dependency
figures, whether the process is serving, and its own CPU and memory; it takes the same bearer token as the API's.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Iterator, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from config.settings import Settings
from resilience.dependencies import DEPENDENCIES, Dependencies, DependencyState

log = logging.getLogger(__name__)


def dependency_metrics(states: Mapping[str, DependencyState]) -> Iterator[Metric]:
    """What this process has seen of each dependency: up now, losses and reconnects since it started."""
    up = GaugeMetricFamily("offload_dependency_up", "1 while this process reaches the dependency",
                           labels=["dependency"])
    losses = CounterMetricFamily("offload_dependency_losses", "times this process lost the dependency",
                                 labels=["dependency"])
    reconnects = CounterMetricFamily("offload_dependency_reconnects",
                                     "times this process got the dependency back after losing it",
                                     labels=["dependency"])
    for name, state in sorted(states.items()):
        up.add_metric([name], int(state.up))
        losses.add_metric([name], state.losses)
        reconnects.add_metric([name], state.reconnects)
    yield from (up, losses, reconnects)


def bearer_authorised(authorization: str, token: str | None, required: bool) -> bool:
    """May a scrape with this ``Authorization`` header read metrics? No token set: only if none is required."""
    if token is None:
        return not required
    return hmac.compare_digest(authorization.encode(errors="surrogateescape"), f"Bearer {token}".encode())


class _Collector(Collector):
    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def collect(self) -> Iterator[Metric]:
        serving = GaugeMetricFamily("offload_process_serving",
                                    "1 once the process serves (the worker after its first table recovery, the "
                                    "projector once its read models and partitions are ready)",
                                    labels=["process"])
        serving.add_metric([self.probe.process], int(self.probe.serving()))
        yield serving
        yield from dependency_metrics(self.probe.dependencies.snapshot())


class Probe:
    """The health and metrics endpoints of one process, on ``host:port``."""

    def __init__(self, process: str, host: str, port: int, *, serving: Callable[[], bool],
                 metrics_token: str | None, token_required: bool,
                 dependencies: Dependencies = DEPENDENCIES) -> None:
        self.process, self.host, self.port = process, host, port
        self.serving = serving
        self.dependencies = dependencies
        self._token, self._token_required = metrics_token, token_required
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))
        ProcessCollector(registry=self._registry)  # process_cpu_seconds_total, process_resident_memory_bytes ...
        self._runner: web.AppRunner | None = None

    def health(self) -> dict[str, object]:
        states = self.dependencies.snapshot()
        down = {name: s for name, s in states.items() if not s.up}
        status = "starting" if not self.serving() else "degraded" if down else "ready"
        return {
            "process": self.process,
            "status": status,
            "reasons": [f"{name}: {s.reason}" for name, s in down.items()],
            "checks": {name: {"up": s.up, "reason": s.reason, "since": round(s.since, 3), "losses": s.losses,
                              "reconnects": s.reconnects} for name, s in sorted(states.items())},
        }

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self.health()), content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        if not bearer_authorised(request.headers.get("Authorization", ""), self._token, self._token_required):
            return web.Response(status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"})
        return web.Response(body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        """Listen on ``host:port``; a port already taken raises ``OSError`` (the process should not run blind)."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]  # the port given, or the one the system chose for 0
        if self._token is None and self._token_required:
            log.warning("/metrics requires a bearer token (metrics_require_token, on in production) but "
                        "OFFLOAD_METRICS_TOKEN is not set: every scrape will be refused")
        log.info("%s health and metrics on http://%s:%d/health and /metrics", self.process, self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def probe_for(process: str, settings: Settings, serving: Callable[[], bool],
              dependencies: Dependencies = DEPENDENCIES) -> Probe:
    """The probe of ``process`` on ``OFFLOAD_HEALTH_HOST:OFFLOAD_HEALTH_PORT``, /metrics behind the API's token."""
    token = settings.metrics_token
    return Probe(process, settings.health_host, settings.health_port, serving=serving,
                 metrics_token=None if token is None else token.get_secret_value(),
                 token_required=settings.metrics_token_required, dependencies=dependencies)
