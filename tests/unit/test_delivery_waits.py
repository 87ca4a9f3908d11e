"""What a stop or rebalance asks of a batch before giving it up: that every chunk (or certificate mail) of it waits,
none may be sending. ``BatchDelivery.waits_for`` is set only while a chunk sleeps between rounds of an outage;
``BatchDelivery.waiting`` also counts a chunk trying again to reach a relay that is unreachable with no session
open; a certificate batch (``_Waits``, also counting learners that wait for the certificate store) and an email batch (``_stall_reason``, with its pacing sleeps) wait only
when all of theirs do."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from adapters.email.base import OnEachResult, Outcome, OutgoingEmail, ProviderUnavailable, SendResult
from adapters.email.delivery import BatchDelivery, Phase, RetryPolicy
from adapters.email.pacing import PacedProvider, RateLimiter
from adapters.email.smtp import SmtpProvider
from streams.handlers.certificate_batches import _Waits
from streams.handlers.email_batches import _stall_reason
from streams.handlers.store_outage import StoreOutage
from tests.support.email import closed_port, outgoing, silent_port


class RelayBackAfter:
    """Unreachable for the first ``down`` rounds, then sends; notes what the delivery said while it sent."""

    name = "smtp"
    max_batch = 25

    def __init__(self, down: int) -> None:
        self.down = down
        self.delivery: BatchDelivery | None = None
        self.seen_while_sending: list[tuple[Phase, str | None]] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send_batch(self, messages: Sequence[OutgoingEmail],
                         on_result: OnEachResult | None = None) -> list[SendResult]:
        assert self.delivery is not None
        self.seen_while_sending.append((self.delivery.phase, self.delivery.waits_for))
        if self.down:
            self.down -= 1
            raise ProviderUnavailable("smtp 127.0.0.1:1: connection refused")
        return [SendResult(m.key, Outcome.SENT) for m in messages]


def test_a_chunk_says_what_it_waits_for_only_while_it_sleeps_out_an_outage() -> None:
    relay = RelayBackAfter(down=2)
    seen_while_sleeping: list[tuple[Phase, str | None]] = []

    async def sleep(_delay: float) -> None:
        assert relay.delivery is not None
        seen_while_sleeping.append((relay.delivery.phase, relay.delivery.waits_for))

    told: list[tuple[str, str, list[tuple[Phase, str | None]]]] = []

    async def on_outage(provider: str, why: str) -> None:
        told.append((provider, why, list(seen_while_sleeping)))

    async def run() -> BatchDelivery:
        delivery = BatchDelivery([outgoing(i) for i in range(3)], primary=relay, fallback=None,
                                 policy=RetryPolicy(max_attempts=2, max_outage_seconds=60.0), sleep=sleep,
                                 on_outage=on_outage)
        relay.delivery = delivery
        report = await delivery.run()
        assert all(result.sent for result in report.results)
        return delivery

    delivery = asyncio.run(run())
    down = "smtp unavailable: connection refused"
    # Told once, as the wait began (before its first sleep), not at each round of it.
    assert [(provider, why.replace("smtp 127.0.0.1:1: ", ""), slept) for provider, why, slept in told] == [
        ("smtp", down, [])]
    assert [(phase, why and why.replace("smtp 127.0.0.1:1: ", "")) for phase, why in seen_while_sleeping] \
        == [(Phase.PROVIDER_DOWN, down)] * 2
    assert relay.seen_while_sending == [(Phase.SENDING, None)] * 3  # a round that may send: not waiting
    assert (delivery.phase, delivery.waits_for) == (Phase.DONE, None)


async def stored_fine() -> None:
    return None


def test_a_certificate_batch_waits_for_the_relay_only_once_every_learner_left_has_a_mail_that_waits() -> None:
    """Its learners render, store and then mail side by side: while one still renders or stores, or one mail
    is in a round that may send, the batch is not given up."""
    down = "smtp unavailable: connection refused"
    mails = [BatchDelivery([outgoing(i)], primary=RelayBackAfter(down=0), fallback=None, policy=RetryPolicy())
             for i in range(3)]
    wait = _Waits(3, None, StoreOutage("job j batch 0", stored_fine, max_seconds=60, base_delay=0.1, max_delay=1))
    for mail in mails[:2]:
        wait.mails.add(mail)
        mail.waits_for = down
    assert wait() is None  # the third learner's certificate is still rendered or stored
    wait.mails.add(mails[2])
    assert wait() is None  # its mail is in a round that may send
    mails[2].waits_for = down
    assert wait() == down
    wait.mails.discard(mails[0])  # one learner done: the two left still wait
    wait.open -= 1
    assert wait() == down
    wait.open, wait.mails = 0, set()
    assert wait() is None


def test_a_chunk_that_tries_again_to_reach_a_silent_relay_waits_with_nothing_in_flight() -> None:
    """A relay that does not answer: each round spends the whole connect timeout trying to open a session, so the
    chunk is nearly never asleep between rounds; with no session open, nothing of it is on its way."""
    async def no_pause(_delay: float) -> None:
        return None

    async def run(port: int) -> None:
        relay = SmtpProvider("127.0.0.1", port, mail_from="noreply@moodle.example.org", connections=2, timeout=0.3)
        delivery = BatchDelivery([outgoing(i) for i in range(3)], primary=relay, fallback=None,
                                 policy=RetryPolicy(max_attempts=2, max_outage_seconds=3600.0), sleep=no_pause)
        sending = asyncio.ensure_future(delivery.run())
        await asyncio.sleep(0)
        assert (delivery.phase, delivery.waiting(relay)) == (Phase.SENDING, None)  # not known unreachable yet
        assert delivery.waiting(None) is None
        deadline = asyncio.get_running_loop().time() + 30
        while (why := delivery.waiting(relay)) is None:
            assert asyncio.get_running_loop().time() < deadline, "the chunk never said it waits for the relay"
            await asyncio.sleep(0.05)
        assert (delivery.phase, delivery.waits_for) == (Phase.SENDING, None)  # it tries again, not asleep
        assert why.startswith(f"smtp unavailable: smtp 127.0.0.1:{port}: ") and "imed out" in why, why
        assert delivery.waiting(None) is None  # not through that relay: what it waits for is not known
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)

    with silent_port() as port:
        asyncio.run(run(port))


class Cloud:
    """A cloud provider (only its name matters here)."""

    name = "ses"
    max_batch = 50

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send_batch(self, messages: Sequence[OutgoingEmail],
                         on_result: OnEachResult | None = None) -> list[SendResult]:
        return [SendResult(m.key, Outcome.SENT) for m in messages]


def test_an_email_batch_is_given_up_only_when_every_chunk_waits_and_a_relay_wait_is_counted_once() -> None:
    """Chunks sleeping for a rate limit, like those in the quota or waiting for the relay, have nothing in flight;
    a chunk in a provider call has. A chunk on a relay that is unreachable and idle may also sleep for its rate:
    it is counted once, so a batch with a cloud send in flight is not given up."""
    async def run(port: int) -> None:
        relay = SmtpProvider("127.0.0.1", port, mail_from="noreply@moodle.example.org", connections=1, timeout=1)
        cloud = PacedProvider(Cloud(), [RateLimiter("ses", 14.0)])
        local = PacedProvider(relay, [RateLimiter("smtp", 1.0)])
        chunks = [BatchDelivery([outgoing(i)], primary=cloud, fallback=local, policy=RetryPolicy()) for i in (1, 2)]
        why = _stall_reason([cloud, local], chunks, relay)

        cloud.rate_waits = 1
        assert why() is None  # the other chunk is in a call to the provider
        cloud.rate_waits = 2
        assert why() == cloud.describe()

        with pytest.raises(ProviderUnavailable):
            await relay.start()  # refused: the relay is unreachable, and no session to it is open
        reason = relay.unreachable_and_idle()
        assert reason is not None and reason.startswith(f"smtp unavailable: smtp 127.0.0.1:{port}: ")
        # The second chunk fell back to the relay and sleeps for its rate: it waits for the relay, once. The first
        # is in a call to the cloud.
        chunks[1].provider = local
        cloud.rate_waits, local.rate_waits = 0, 1
        assert why() is None
        cloud.rate_waits = 1  # now it sleeps for the cloud's rate: nothing is in flight
        assert why() == reason

    asyncio.run(run(closed_port()))
