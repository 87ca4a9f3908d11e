"""The rate limiter's arithmetic on a clock the test moves: spacing, slowing down, speeding back up, reasons."""

from __future__ import annotations

import pytest

from adapters.email.pacing import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_calls_are_spaced_so_the_rate_is_never_exceeded() -> None:
    clock = Clock()
    limiter = RateLimiter("ses", 14, "SES max send rate 14/s", clock=clock)
    assert limiter.chunk() == 14
    assert limiter.delay_for(14) == 0.0
    assert limiter.delay_for(14) == pytest.approx(1.0)  # the next 14 may start a second later
    assert limiter.delay_for(7) == pytest.approx(2.0)
    clock.now += 10  # idle time is not saved up into a burst
    assert limiter.delay_for(14) == 0.0
    assert limiter.describe() == "paced by SES max send rate 14/s"


def test_no_cap_means_no_wait() -> None:
    limiter = RateLimiter("smtp", None, clock=Clock())
    assert limiter.rate is None and limiter.chunk() is None
    assert limiter.delay_for(10_000) == 0.0
    assert limiter.describe() == "smtp: not paced"


def test_throttling_halves_the_rate_and_success_brings_it_back_to_the_ceiling() -> None:
    clock = Clock()
    limiter = RateLimiter("sendgrid", 100, "account 100/s", clock=clock)
    limiter.throttled()
    assert limiter.rate == pytest.approx(50)
    assert limiter.describe() == "slowed after sendgrid throttling to 50/s"
    limiter.throttled()
    assert limiter.rate == pytest.approx(25)
    steps = 0
    while limiter.rate != 100:
        limiter.succeeded()
        steps += 1
        assert steps < 100
    assert steps == 15  # 25 * 1.1**15 > 100: about fifteen calls without throttling
    assert limiter.describe() == "paced by account 100/s"


def test_throttling_without_a_cap_starts_from_what_was_actually_sent() -> None:
    clock = Clock()
    limiter = RateLimiter("mailgun", clock=clock)
    for _ in range(10):
        limiter.delay_for(40)  # 400 in the last few seconds
        clock.now += 1
    limiter.throttled()
    assert limiter.rate == pytest.approx(40 / 2, rel=0.2)
    for _ in range(40):
        limiter.succeeded()
    assert limiter.rate is None  # far above what is sent: the slowdown is lifted


def test_a_hold_pauses_every_call_until_the_reset_and_says_why() -> None:
    clock = Clock()
    limiter = RateLimiter("sendgrid", clock=clock)
    limiter.hold_until(3.0, "sendgrid 429 (rate limit reset)")
    assert limiter.describe() == "paused by sendgrid 429 (rate limit reset)"
    assert limiter.delay_for(5) == pytest.approx(3.0)
    clock.now += 3.5
    assert limiter.describe() == "sendgrid: not paced"


def test_a_new_account_ceiling_replaces_the_old_one() -> None:
    limiter = RateLimiter("ses", clock=Clock())
    limiter.set_ceiling(14, "SES max send rate 14/s")
    assert limiter.rate == 14 and limiter.chunk() == 14
    limiter.set_ceiling(1, "SES max send rate 1/s")
    assert limiter.describe() == "paced by SES max send rate 1/s"


class _Answers:
    """A provider that answers from a script: the wrapper's logic is under test, not a provider's."""

    name, max_batch = "smtp", 100

    def __init__(self, outcome) -> None:  # type: ignore[no-untyped-def]
        self.outcome = outcome

    async def send_batch(self, messages, on_result=None):  # type: ignore[no-untyped-def]
        from adapters.email.base import SendResult

        return [SendResult(m.key, self.outcome) for m in messages]


@pytest.mark.parametrize("learn", [True, False])
async def test_throttling_slows_the_limiters_only_when_it_speaks_for_the_account(learn: bool) -> None:
    from adapters.email.base import Outcome
    from adapters.email.pacing import PacedProvider
    from tests.support.email import outgoing

    limiter = RateLimiter("smtp", 100, "cap 100/s", clock=Clock())

    async def no_sleep(_: float) -> None:
        return None

    paced = PacedProvider(_Answers(Outcome.THROTTLED), [limiter], no_sleep,  # type: ignore[arg-type]
                          learn_from_throttling=learn)
    results = await paced.send_batch([outgoing(i) for i in range(5)])
    assert [r.outcome for r in results] == [Outcome.THROTTLED] * 5
    assert limiter.rate == (50 if learn else 100)
