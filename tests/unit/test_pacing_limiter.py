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


async def test_a_call_that_sleeps_for_its_pace_is_counted_while_it_sleeps_and_only_then() -> None:
    """What a stop or rebalance asks of a batch (streams.handlers.email_batches._stall_reason): a call asleep until
    the limiters let its next part go has nothing in flight."""
    from adapters.email.base import Outcome
    from adapters.email.pacing import PacedProvider
    from tests.support.email import outgoing

    limiter = RateLimiter("smtp", 2, "cap 2/s", clock=Clock())  # two messages a call, a second apart
    seen_asleep: list[int] = []
    seen_sending: list[int] = []

    class Watched(_Answers):
        async def send_batch(self, messages, on_result=None):  # type: ignore[no-untyped-def]
            seen_sending.append(paced.rate_waits)
            return await super().send_batch(messages, on_result)

    async def sleep(_: float) -> None:
        seen_asleep.append(paced.rate_waits)

    paced = PacedProvider(Watched(Outcome.SENT), [limiter], sleep)  # type: ignore[arg-type]
    results = await paced.send_batch([outgoing(i) for i in range(6)])
    assert [r.outcome for r in results] == [Outcome.SENT] * 6
    assert seen_asleep == [1, 1] and seen_sending == [0, 0, 0]  # the first call goes at once
    assert paced.rate_waits == 0


def test_a_worker_takes_its_share_of_the_account_rate_and_says_so() -> None:
    clock = Clock()
    limiter = RateLimiter("ses", 14, "SES max send rate 14/s", clock=clock)
    limiter.set_share(6 / 12)  # this worker owns 6 of the 12 batch partitions
    assert limiter.rate == pytest.approx(7.0) and limiter.chunk() == 7
    assert limiter.delay_for(7) == 0.0 and limiter.delay_for(7) == pytest.approx(1.0)
    assert limiter.describe() == "paced by SES max send rate 14/s, this worker's share 50%: 7/s"
    limiter.set_share(1.0)
    assert limiter.describe() == "paced by SES max send rate 14/s"
    with pytest.raises(ValueError, match="share"):
        limiter.set_share(0.0)


def test_shares_of_two_workers_add_up_to_the_account_rate_over_any_stretch() -> None:
    clock = Clock()
    workers = [RateLimiter("sendgrid", 40, "account 40/s", clock=clock) for _ in range(2)]
    for limiter, share in zip(workers, (5 / 12, 7 / 12), strict=True):
        limiter.set_share(share)
    sent = 0
    for _ in range(100):  # each worker keeps its own schedule full for 10 s of the test clock
        for limiter in workers:
            chunk = limiter.chunk()
            assert chunk is not None
            if limiter.delay_for(chunk) <= 10.0:
                sent += chunk
    assert sent <= 40 * 10 + 40  # the rate over 10 s, plus one call per worker at the start


async def test_the_daily_quota_grants_what_is_left_then_pauses_until_a_read_shows_room() -> None:
    import asyncio

    from adapters.email.quota import DailyQuota

    quota = DailyQuota("SES", "pause")
    told = asyncio.create_task(quota.paused())  # what a batch out with this provider waits on to say it waits
    early = asyncio.create_task(quota.take(5))  # the account not read yet: nothing goes before it is
    await asyncio.sleep(0.01)
    assert not early.done() and quota.room() is None and not quota.waiting
    quota.update(200, 185)
    assert await asyncio.wait_for(early, 1) == 5
    assert await quota.take(25) == 10  # only ten left in the 24-hour window
    await asyncio.sleep(0.01)
    assert not told.done()
    waiting = asyncio.create_task(quota.take(5))
    await asyncio.sleep(0.01)
    assert not waiting.done() and quota.waiting == 1
    assert quota.paused_by == "SES 24-hour quota reached: 200 of Max24HourSend 200 sent in the last 24 h"
    assert await asyncio.wait_for(told, 1) == quota.paused_by
    assert await asyncio.wait_for(quota.paused(), 1) == quota.paused_by  # asked while paused: at once
    quota.update(200, 150)  # the window rolled on: 50 free again
    assert await asyncio.wait_for(waiting, 1) == 5 and quota.paused_by is None
    told = asyncio.create_task(quota.paused())
    await asyncio.sleep(0.01)
    assert not told.done()  # resumed: nothing to say until calls wait again
    told.cancel()
    quota.update(-1, 10_000)  # SES's "unlimited"
    assert quota.room() is None


async def test_the_daily_quota_set_to_local_refuses_once_used_up_and_shares_split_the_room() -> None:
    from adapters.email.quota import DailyQuota, DailyQuotaReached

    quota = DailyQuota("SES", "local")
    quota.update(1000, 400)
    quota.set_share(0.25)
    assert quota.room() == pytest.approx(150.0)
    assert await quota.take(200) == 150
    with pytest.raises(DailyQuotaReached, match="this worker's share 25%"):
        await quota.take(1)


async def test_a_read_of_the_quota_that_goes_unanswered_lets_calls_go_on_unlimited() -> None:
    import asyncio

    from adapters.email.quota import DailyQuota

    quota = DailyQuota("SES", "pause")
    waiting = asyncio.create_task(quota.take(500))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    quota.unread()  # no answer (credentials, network): what is known is in force, here no quota
    assert await asyncio.wait_for(waiting, 1) == 500
