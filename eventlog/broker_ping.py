"""Whether a Kafka broker answers, for a process's health: the worker's and the projector's, asked every few
seconds, and the API's, asked on its publisher's own client.

Faust's and aiokafka's consumers reconnect by themselves and tell nobody: an idle consumer whose broker is gone
just gets no records. A metadata request on a client of its own, every ``interval`` seconds, says "kafka" is lost
or back in the process's dependency record (:mod:`resilience.dependencies`); :mod:`eventlog.served` pairs that
watch with the process's ``/health`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from resilience.dependencies import Dependencies
from resilience.reasons import reason

log = logging.getLogger(__name__)

KAFKA = "kafka"  # the name in the dependency record
PING_TIMEOUT = 10.0  # a broker slower than this to answer metadata is as good as gone


async def ask_metadata(client: AIOKafkaClient, timeout: float) -> None:
    """Raise unless a broker answers a metadata request on ``client`` within ``timeout`` seconds."""
    if not await asyncio.wait_for(client.force_metadata_update(), timeout):
        raise ConnectionError("no broker answered a metadata request")


class BrokerPing:
    """Raise unless a broker answers a metadata request within the timeout; one client, kept between pings."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._client: AIOKafkaClient | None = None

    async def __call__(self, timeout: float) -> None:
        if self._client is None:
            client = AIOKafkaClient(bootstrap_servers=self.bootstrap_servers,
                                    request_timeout_ms=int(timeout * 1000))
            try:
                await asyncio.wait_for(client.bootstrap(), timeout)
            except BaseException:
                await client.close()  # a failed bootstrap leaves its connections behind otherwise
                raise
            self._client = client
        await ask_metadata(self._client, timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


async def watch_broker(bootstrap_servers: str, dependencies: Dependencies, interval: float) -> None:
    """Ping every ``interval`` seconds and record the answer, until cancelled."""
    ping = BrokerPing(bootstrap_servers)
    dependencies.track(KAFKA)
    try:
        while True:
            try:
                await ping(PING_TIMEOUT)
                dependencies.restored(KAFKA)
            except Exception as exc:  # noqa: BLE001 - any failure is no answer: the watch goes on, and says so
                if not isinstance(exc, KafkaError | OSError | TimeoutError):  # not an outage: a surprise, logged
                    log.exception("asking the broker for metadata failed unexpectedly")
                dependencies.lost(KAFKA, reason(exc))
                await ping.close()  # a fresh client (and bootstrap) for the next ping
            await asyncio.sleep(interval)
    finally:
        await asyncio.shield(ping.close())
