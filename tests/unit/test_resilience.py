"""The per-process record of dependencies (what health and metrics read) and the reconnect back-off."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from api.errors import ApiError
from resilience.dependencies import Backoff, Dependencies
from resilience.probe import dependency_metrics


def test_an_outage_is_counted_once_and_its_end_as_a_reconnect():
    deps = Dependencies()
    deps.track("postgres")
    assert deps.snapshot()["postgres"].up and deps.down() == {}
    deps.lost("postgres", "connection refused")
    deps.lost("postgres", "the database system is starting up")  # the same outage, a newer reason
    assert deps.down() == {"postgres": "the database system is starting up"}
    deps.restored("postgres")
    deps.restored("postgres")  # answering again while up is no reconnect
    state = deps.snapshot()["postgres"]
    assert (state.up, state.reason, state.losses, state.reconnects) == (True, None, 1, 1)


def test_metrics_expose_each_dependency_up_losses_and_reconnects():
    deps = Dependencies()
    deps.track("postgres")
    deps.track("kafka")
    for _ in range(2):  # two outages of Postgres, both over; Kafka down now
        deps.lost("postgres", "connection refused")
        deps.restored("postgres")
    deps.lost("kafka", "broker gone")

    class Deps(Collector):
        def collect(self):
            return dependency_metrics(deps.snapshot())

    registry = CollectorRegistry()
    registry.register(Deps())
    text = generate_latest(registry).decode()
    for line in ('offload_dependency_up{dependency="postgres"} 1.0', 'offload_dependency_up{dependency="kafka"} 0.0',
                 'offload_dependency_losses_total{dependency="postgres"} 2.0',
                 'offload_dependency_reconnects_total{dependency="postgres"} 2.0',
                 'offload_dependency_reconnects_total{dependency="kafka"} 0.0'):
        assert line in text.splitlines(), (line, text)


def test_back_off_doubles_to_its_cap_with_bounded_jitter_and_starts_again_after_a_reset():
    backoff = Backoff(base=0.5, cap=4.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(6)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    backoff.reset()
    assert 0.25 <= backoff.next() <= 0.5


def test_a_503_says_when_to_come_back():
    response = ApiError(503, "database_unavailable", "later", retry_after=7).response()
    assert response.status == 503 and response.headers["Retry-After"] == "7"
    assert "Retry-After" not in ApiError(422, "invalid_field", "no").response().headers
