"""The per-process record of dependencies (what health and metrics read) and the reconnect back-off."""

from __future__ import annotations

import asyncio
import random

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from api.errors import ApiError
from resilience.dependencies import Backoff, Dependencies, recheck_lost
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


def test_a_lost_dependency_is_asked_again_until_it_answers_and_then_no_more():
    deps = Dependencies()
    answer_now = asyncio.Event()
    asked: list[int] = []

    async def recheck() -> None:
        asked.append(len(asked) + 1)
        if len(asked) == 1:
            raise ConnectionError("s3 bucket b: connection refused")
        await answer_now.wait()  # the second one hangs (a thread waiting on a dead endpoint) until it answers

    async def scenario() -> list[str | None]:
        reasons: list[str | None] = []
        deps.lost("storage s3", "s3 bucket b: put failed", recheck=recheck)
        deps.lost("smtp-relay", "127.0.0.1:25: refused")  # no recheck: only its next use tells
        watch = asyncio.create_task(recheck_lost(deps, interval=0.01, timeout=0.05))
        try:
            async with asyncio.timeout(5):
                while deps.down().get("storage s3") != "no answer within 0.05 s":
                    if reasons[-1:] != [deps.down()["storage s3"]]:
                        reasons.append(deps.down()["storage s3"])
                    await asyncio.sleep(0.001)
            reasons.append(deps.down()["storage s3"])
            await asyncio.sleep(0.3)  # several rounds: the hung one is waited for again, not asked again
            assert asked == [1, 2] and not deps.snapshot()["storage s3"].up
            answer_now.set()
            async with asyncio.timeout(5):
                while not deps.snapshot()["storage s3"].up:
                    await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)  # back: asked no more
        finally:
            watch.cancel()
        return reasons

    reasons = asyncio.run(scenario())
    assert reasons == ["s3 bucket b: put failed", "s3 bucket b: connection refused", "no answer within 0.05 s"]
    assert asked == [1, 2]
    state = deps.snapshot()["storage s3"]
    assert (state.up, state.losses, state.reconnects) == (True, 1, 1)
    assert deps.down() == {"smtp-relay": "127.0.0.1:25: refused"} and deps.rechecks() == {}


def test_a_dependency_back_through_use_is_no_longer_asked_again():
    deps = Dependencies()

    async def recheck() -> None:
        raise AssertionError("asked after it was back")

    deps.lost("storage local", "disk full", recheck=recheck)
    assert list(deps.rechecks()) == ["storage local"]
    deps.restored("storage local")  # the next certificate was stored
    assert deps.rechecks() == {}
    deps.lost("storage local", "disk full again")  # a loss reported without a recheck keeps none from before
    assert deps.rechecks() == {}


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
