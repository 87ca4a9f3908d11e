"""The health and metrics endpoints of the worker and the projector (resilience.probe), on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from config.settings import Settings
from eventlog.broker_ping import KAFKA, watch_broker
from eventlog.served import served
from resilience.dependencies import Dependencies
from resilience.probe import Probe
from tests.support.email import closed_port


class Serving:
    def __init__(self) -> None:
        self.now = False

    def __call__(self) -> bool:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _get(session: aiohttp.ClientSession, probe: Probe, path: str,
               headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{probe.port}{path}", headers=headers or {}) as response:
        return response.status, await response.text()


async def test_health_says_starting_then_ready_then_degraded_with_why(session: aiohttp.ClientSession) -> None:
    deps, serving = Dependencies(), Serving()
    deps.track("kafka")
    probe = Probe("worker", "127.0.0.1", 0, serving=serving, metrics_token=None, token_required=False,
                  dependencies=deps)
    await probe.start()
    try:
        assert probe.port != 0
        async with session.get(f"http://127.0.0.1:{probe.port}/health") as response:
            assert response.status == 200 and response.content_type == "application/json"
            first = await response.json()
        assert (first["process"], first["status"], first["reasons"]) == ("worker", "starting", [])
        serving.now = True
        async with session.get(f"http://127.0.0.1:{probe.port}/health") as response:
            assert (await response.json())["status"] == "ready"
        deps.lost("smtp-relay", "127.0.0.1:2525: connection refused")
        async with session.get(f"http://127.0.0.1:{probe.port}/health") as response:
            assert response.status == 200  # the process answers: degraded is said in the body
            body = await response.json()
        assert body["status"] == "degraded"
        assert body["reasons"] == ["smtp-relay: 127.0.0.1:2525: connection refused"]
        assert body["checks"]["kafka"]["up"] is True and body["checks"]["smtp-relay"]["losses"] == 1
    finally:
        await probe.stop()


async def test_metrics_carry_the_dependencies_serving_and_the_process_itself(
        session: aiohttp.ClientSession) -> None:
    deps = Dependencies()
    deps.track("kafka")
    deps.lost("provider ses:default:eu-west-1", "circuit open: timeout")
    probe = Probe("projector", "127.0.0.1", 0, serving=lambda: True, metrics_token=None, token_required=False,
                  dependencies=deps)
    await probe.start()
    try:
        status, text = await _get(session, probe, "/metrics")
        lines = text.splitlines()
        assert status == 200
        for line in ('offload_dependency_up{dependency="kafka"} 1.0',
                     'offload_dependency_up{dependency="provider ses:default:eu-west-1"} 0.0',
                     'offload_dependency_losses_total{dependency="provider ses:default:eu-west-1"} 1.0',
                     'offload_process_serving{process="projector"} 1.0'):
            assert line in lines, (line, text)
        assert any(line.startswith("process_resident_memory_bytes ") for line in lines), text
    finally:
        await probe.stop()


async def test_metrics_take_the_bearer_token_and_health_does_not(session: aiohttp.ClientSession) -> None:
    probe = Probe("worker", "127.0.0.1", 0, serving=lambda: True, metrics_token="scrape-token-0123456789",
                  token_required=True, dependencies=Dependencies())
    await probe.start()
    try:
        assert (await _get(session, probe, "/metrics"))[0] == 401
        assert (await _get(session, probe, "/metrics", {"Authorization": "Bearer wrong"}))[0] == 401
        status, text = await _get(session, probe, "/metrics", {"Authorization": "Bearer scrape-token-0123456789"})
        assert status == 200 and "offload_process_serving" in text
        assert (await _get(session, probe, "/health"))[0] == 200
    finally:
        await probe.stop()
    required_but_unset = Probe("worker", "127.0.0.1", 0, serving=lambda: True, metrics_token=None,
                               token_required=True, dependencies=Dependencies())
    await required_but_unset.start()
    try:
        assert (await _get(session, required_but_unset, "/metrics"))[0] == 401  # refused, never open
    finally:
        await required_but_unset.stop()


async def test_a_port_already_taken_stops_the_start_with_the_error() -> None:
    first = Probe("worker", "127.0.0.1", 0, serving=lambda: True, metrics_token=None, token_required=False)
    await first.start()
    try:
        second = Probe("worker", "127.0.0.1", first.port, serving=lambda: True, metrics_token=None,
                       token_required=False)
        with pytest.raises(OSError):
            await second.start()
        await second.stop()  # nothing left to clean up, and no error
    finally:
        await first.stop()


async def test_a_broker_that_does_not_answer_is_lost_at_the_first_ping_and_the_watch_stops_when_cancelled() -> None:
    deps = Dependencies()
    watch = asyncio.create_task(watch_broker(f"127.0.0.1:{closed_port()}", deps, interval=0.05))
    try:
        for _ in range(400):  # refused at once on loopback: lost at the first ping
            if KAFKA in deps.down():
                break
            await asyncio.sleep(0.05)
        assert KAFKA in deps.down(), deps.snapshot()
        assert deps.snapshot()[KAFKA].losses == 1  # one outage, however many pings failed
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    assert watch.cancelled()


async def test_served_health_asks_a_lost_dependency_again_until_it_is_back(session: aiohttp.ClientSession) -> None:
    # What the worker and the projector run (eventlog.served): besides the broker's ping, each lost dependency
    # that can be asked again is, so an idle worker says "ready" once its store is back.
    deps, port = Dependencies(), closed_port()
    settings = Settings(environment="test", health_port=port, health_interval=0.05,
                        kafka_bootstrap_servers=f"127.0.0.1:{closed_port()}")
    store_back = asyncio.Event()

    async def recheck() -> None:
        if not store_back.is_set():
            raise ConnectionError("local certificate store /srv/certs: No space left on device")

    async def status() -> dict[str, object]:
        async with session.get(f"http://127.0.0.1:{port}/health") as response:
            return dict(await response.json())

    async with served("worker", settings, serving=lambda: True, dependencies=deps):
        deps.lost("storage local", "disk full", recheck=recheck)
        async with asyncio.timeout(10):
            while "storage local: local certificate store /srv/certs: No space left on device" not in (
                    body := await status())["reasons"]:  # asked again, and still lost: the newer reason
                await asyncio.sleep(0.02)
        assert body["status"] == "degraded"
        store_back.set()
        async with asyncio.timeout(10):
            while not (body := await status())["checks"]["storage local"]["up"]:  # type: ignore[index]
                await asyncio.sleep(0.02)
        assert body["checks"]["storage local"]["reconnects"] == 1  # type: ignore[index]
