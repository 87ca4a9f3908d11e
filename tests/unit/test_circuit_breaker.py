"""The circuit breaker per provider account, and how a batch's delivery obeys it (real SMTP sink, fake clock)."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.email.base import OnEachResult, Outcome, OutgoingEmail, ProviderUnavailable, SendResult
from adapters.email.breaker import (
    BreakerPolicy,
    Breakers,
    CircuitState,
    ProviderAccount,
    account_label,
)
from adapters.email.delivery import Phase, RetryPolicy, deliver
from resilience.dependencies import Dependencies
from tests.support.email import RecordingSleep, outgoing

SES = ProviderAccount("ses", "default", "eu-west-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedProvider:
    """A provider whose rounds are scripted: 'down' raises ProviderUnavailable, '5xx' answers RETRY for all,
    'up' sends everything. Counts the messages it was asked to send."""

    max_batch = 100

    def __init__(self, name: str, script: list[str]) -> None:
        self.name = name
        self.script = list(script)
        self.asked = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send_batch(self, messages: Sequence[OutgoingEmail],
                         on_result: OnEachResult | None = None) -> list[SendResult]:
        self.asked += len(messages)
        mode = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if mode == "down":
            raise ProviderUnavailable("connection refused")
        if mode == "5xx":
            return [SendResult(m.key, Outcome.RETRY, error="InternalFailure: 500") for m in messages]
        if mode == "unreached":
            return [SendResult(m.key, Outcome.UNREACHED, error="relay gone") for m in messages]
        return [SendResult(m.key, Outcome.SENT, provider_message_id=f"{self.name}-{m.key}") for m in messages]


def policy(**kwargs: object) -> RetryPolicy:
    return RetryPolicy(**{"max_attempts": 5, "base_delay": 0.01, "max_delay": 0.05, **kwargs})  # type: ignore[arg-type]


def test_account_labels_never_show_the_key_id():
    label = account_label("AKIAEXAMPLEKEY123")
    assert label.startswith("key-") and "AKIA" not in label and label == account_label("AKIAEXAMPLEKEY123")
    assert account_label(None) == "default"
    assert SES.key == "ses:default:eu-west-1"


def test_the_circuit_opens_after_consecutive_failures_only():
    clock = Clock()
    breaker = Breakers(BreakerPolicy(failure_threshold=3, cooldown=30), clock).for_account(SES)
    breaker.failed("down")
    breaker.failed("down")
    breaker.succeeded()  # an answer in between resets the count
    breaker.failed("down")
    breaker.failed("down")
    assert breaker.state is CircuitState.CLOSED and breaker.allows()
    breaker.failed("down")
    assert breaker.state is CircuitState.OPEN and not breaker.allows()
    (opened,) = breaker.drain()
    assert opened.opened and opened.consecutive_failures == 3 and opened.cooldown_seconds == 30
    assert opened.account == SES and opened.reason == "down"


def test_after_the_cool_down_one_probe_goes_through_and_closes_or_reopens_the_circuit():
    clock = Clock()
    breakers = Breakers(BreakerPolicy(failure_threshold=1, cooldown=30), clock)
    breaker = breakers.for_account(SES)
    breaker.failed("down")
    clock.now += 29.9
    assert not breaker.allows()
    clock.now += 0.2
    assert breaker.allows()  # the probe
    assert breaker.state is CircuitState.PROBING and not breaker.allows()  # only one
    breaker.failed("still down")  # the probe failed: open for another cool-down
    assert breaker.state is CircuitState.OPEN and not breaker.allows()
    clock.now += 30
    assert breaker.allows()
    breaker.succeeded()
    assert breaker.state is CircuitState.CLOSED and breaker.allows()
    changes = breakers.drain()
    assert [c.opened for c in changes] == [True, True, False]
    assert changes[-1].open_seconds == 30.0 and breakers.drain() == []
    assert breakers.open_circuits() == []


def test_a_probe_that_never_reports_is_replaced_after_a_cool_down():
    clock = Clock()
    breaker = Breakers(BreakerPolicy(failure_threshold=1, cooldown=10), clock).for_account(SES)
    breaker.failed("down")
    clock.now += 10
    assert breaker.allows() and not breaker.allows()
    clock.now += 10
    assert breaker.allows()


def test_a_circuit_open_is_its_provider_down_in_the_dependency_record_until_it_closes():
    clock, deps = Clock(), Dependencies()
    breakers = Breakers(BreakerPolicy(failure_threshold=2, cooldown=30), clock, dependencies=deps)
    breaker = breakers.for_account(SES)
    assert deps.snapshot()["provider ses:default:eu-west-1"].up  # listed from its first use
    breaker.failed("timeout")
    assert deps.down() == {}  # one failure opens nothing
    breaker.failed("connection refused")
    assert deps.down() == {"provider ses:default:eu-west-1": "circuit open: connection refused"}
    clock.now += 30
    assert breaker.allows()
    breaker.succeeded()
    state = deps.snapshot()["provider ses:default:eu-west-1"]
    assert (state.up, state.losses, state.reconnects) == (True, 1, 1)
    Breakers(BreakerPolicy(), clock).for_account(SES).failed("down")  # no record given: nothing reported
    assert len(deps.snapshot()) == 1


def test_breakers_are_per_account_and_region():
    breakers = Breakers(BreakerPolicy(failure_threshold=1))
    breakers.for_account(SES).failed("down")
    assert breakers.for_account(SES).state is CircuitState.OPEN
    assert breakers.for_account(ProviderAccount("ses", "default", "us-east-1")).state is CircuitState.CLOSED
    assert breakers.for_account(ProviderAccount("ses", "key-1", "eu-west-1")).state is CircuitState.CLOSED
    assert breakers.open_circuits() == [SES.key]


async def test_an_open_circuit_sends_the_next_batches_straight_to_the_fallback():
    clock = Clock()
    breakers = Breakers(BreakerPolicy(failure_threshold=2, cooldown=30), clock)
    breaker = breakers.for_account(SES)
    ses, smtp = ScriptedProvider("ses", ["down"]), ScriptedProvider("smtp", ["up"])
    sleep = RecordingSleep()
    first = await deliver([outgoing(i) for i in range(5)], primary=ses, fallback=smtp, policy=policy(),
                          sleep=sleep, breaker=breaker)
    # Two failed rounds open the circuit; the batch falls back then instead of after max_attempts rounds.
    assert first.fell_back and ses.asked == 10 and len(sleep.delays) == 1
    assert all(r.sent and r.provider == "smtp" and r.attempts == 1 for r in first.results)
    for _ in range(3):
        later = await deliver([outgoing(i) for i in range(5)], primary=ses, fallback=smtp, policy=policy(),
                              sleep=sleep, breaker=breaker)
        assert later.fell_back and later.fallback_reason.startswith("circuit open for ses:default:eu-west-1")
    assert ses.asked == 10 and len(sleep.delays) == 1  # not asked again, no waiting
    # Cool-down over, SES back: the probe batch goes through SES and closes the circuit.
    clock.now += 30
    ses.script = ["up"]
    probe = await deliver([outgoing(i) for i in range(5)], primary=ses, fallback=smtp, policy=policy(),
                          sleep=sleep, breaker=breaker)
    assert not probe.fell_back and all(r.provider == "ses" for r in probe.results)
    assert breaker.state is CircuitState.CLOSED
    assert [c.opened for c in breakers.drain()] == [True, False]


async def test_provider_5xx_on_every_message_counts_as_a_failure():
    breaker = Breakers(BreakerPolicy(failure_threshold=2)).for_account(SES)
    ses, smtp = ScriptedProvider("ses", ["5xx"]), ScriptedProvider("smtp", ["up"])
    report = await deliver([outgoing(i) for i in range(3)], primary=ses, fallback=smtp, policy=policy(),
                           sleep=RecordingSleep(), breaker=breaker)
    assert report.fell_back and breaker.state is CircuitState.OPEN
    assert all(r.sent and r.provider == "smtp" for r in report.results)


async def test_without_a_fallback_an_outage_is_waited_out_without_spending_attempts():
    relay = ScriptedProvider("smtp", ["down"] * 6 + ["unreached", "up"])
    sleep = RecordingSleep()
    report = await deliver([outgoing(i) for i in range(4)], primary=relay, fallback=None,
                           policy=policy(max_attempts=2, max_outage_seconds=3600), sleep=sleep)
    assert all(r.sent and r.attempts == 1 for r in report.results)  # 7 rounds down, max_attempts=2, none spent
    assert len(sleep.delays) == 7


async def test_an_outage_longer_than_the_bound_fails_retryable():
    relay = ScriptedProvider("smtp", ["down"])
    report = await deliver([outgoing(i) for i in range(2)], primary=relay, fallback=None,
                           policy=RetryPolicy(max_attempts=2, base_delay=1, max_delay=1, max_outage_seconds=5),
                           sleep=RecordingSleep())
    assert all(not r.sent and r.retryable and r.attempts == 0 for r in report.results)
    assert "smtp unavailable" in (report.results[0].error or "")


def test_the_phases_read_as_names():
    assert [p.value for p in Phase] == ["sending", "backing off", "throttled", "provider down", "falling back",
                                        "giving up", "done"]
