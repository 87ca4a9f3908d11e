"""The worker's and the projector's own ``/health`` and ``/metrics`` (OFFLOAD_HEALTH_PORT) through the outages
they live through: the SMTP relay gone mid-job, the broker gone. Each says degraded and why while it lasts, and
ready again, with the loss and the reconnect counted, once it is over."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from offload.client import submit_job
from tests.support.email import closed_port
from tests.support.observe import wait_for, wait_for_job

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _get(port: int, path: str) -> str | None:
    """The body, or None while the process does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            assert response.status == 200
            return response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None


def health(port: int) -> dict[str, Any] | None:
    body = _get(port, "/health")
    return None if body is None else json.loads(body)


def metrics(port: int) -> list[str]:
    body = _get(port, "/metrics")
    assert body is not None
    return body.splitlines()


class When:
    """Health of ``port`` once it has ``status`` and ``check`` is up (or not); keeps the last answer for the
    failure message."""

    def __init__(self, port: int, status: str, check: str, up: bool) -> None:
        self.port, self.status, self.check, self.up = port, status, check, up
        self.last: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any] | None:
        h = self.last = health(self.port)
        return h if h is not None and h["status"] == self.status and h["checks"][self.check]["up"] is self.up \
            else None

    def __repr__(self) -> str:
        return f"health of :{self.port} to be {self.status} with {self.check} up={self.up} (last: {self.last})"


def when(port: int, status: str, check: str, up: bool) -> When:
    return When(port, status, check, up)


def test_the_worker_says_while_its_relay_is_gone_and_counts_it_when_it_is_back(
    settings_factory, topics_for, processes, job_factory, slow_sink
):
    port = closed_port()
    settings = settings_factory(smtp_port=slow_sink.port, job_batch_size=20, smtp_connections=2, health_port=port,
                                relay_outage_max_seconds=600, stall_redispatch_seconds=120)
    topics_for(settings)
    processes("worker", settings)  # waits for "Worker: Ready": its first table recovery is done
    processes("projector", settings.model_copy(update={"health_port": 0}))
    ready = wait_for(when(port, "ready", "smtp-relay", True), timeout=60)
    assert ready["process"] == "worker" and ready["checks"]["kafka"]["up"] and ready["reasons"] == []
    assert {'offload_process_serving{process="worker"} 1.0',
            'offload_dependency_up{dependency="kafka"} 1.0',
            'offload_dependency_up{dependency="smtp-relay"} 1.0'} <= set(metrics(port))

    relay = slow_sink.port
    slow_sink.go_away()
    try:
        asyncio.run(submit_job(settings, job_factory("health-relay", 40)))
        degraded = wait_for(when(port, "degraded", "smtp-relay", False), timeout=120)
        assert any(r.startswith(f"smtp-relay: 127.0.0.1:{relay}: ") for r in degraded["reasons"])
        assert 'offload_dependency_up{dependency="smtp-relay"} 0.0' in metrics(port)
    finally:
        slow_sink.come_back()

    job = wait_for_job(settings, "health-relay", timeout=180)
    assert (job["succeeded"], job["failed"]) == (40, 0)
    back = wait_for(when(port, "ready", "smtp-relay", True), timeout=60)
    assert back["checks"]["smtp-relay"]["losses"] == back["checks"]["smtp-relay"]["reconnects"] >= 1
    assert 'offload_dependency_reconnects_total{dependency="smtp-relay"} ' + \
        f'{float(back["checks"]["smtp-relay"]["reconnects"])}' in metrics(port)


def test_worker_and_projector_say_while_the_broker_is_gone_and_are_ready_when_it_is_back(
    settings_factory, topics_for, processes, mail_sink, stack
):
    worker_port, projector_port = closed_port(), closed_port()
    settings = settings_factory(smtp_port=mail_sink.port, health_port=worker_port, health_interval=0.5,
                                reconnect_max_delay=2.0)
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings.model_copy(update={"health_port": projector_port}))
    for port in (worker_port, projector_port):
        wait_for(when(port, "ready", "kafka", True), timeout=60)
    assert health(projector_port)["process"] == "projector"

    stack.stop_broker()
    try:
        for port in (worker_port, projector_port):
            degraded = wait_for(when(port, "degraded", "kafka", False), timeout=60)
            assert any(r.startswith("kafka: ") for r in degraded["reasons"]), degraded
            assert 'offload_dependency_up{dependency="kafka"} 0.0' in metrics(port)
    finally:
        stack.start_broker()

    for port in (worker_port, projector_port):
        back = wait_for(when(port, "ready", "kafka", True), timeout=120)
        assert back["checks"]["kafka"]["reconnects"] >= 1
