"""Pacing against real servers: an account limit is never exceeded, a 429 storm slows sends without failing
anyone, and SES is paced by the quota its API reports (moto serves v1 GetSendQuota, not v2 GetAccount)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import boto3
import pytest

from adapters.email.delivery import RetryPolicy, deliver
from adapters.email.pacing import PacedProvider, RateLimiter
from adapters.email.sendgrid import SendGridProvider
from config.settings import Settings
from devtools.provider_servers import Call, SendGridServer
from streams.handlers.email_providers import EmailProviders
from tests.support.email import MAIL_DOMAIN, MAIL_FROM, outgoing
from tests.support.moto_server import MotoServer

pytestmark = pytest.mark.integration
KEY = "SG.pacing-test-key"


@pytest.fixture
def sendgrid() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=KEY) as server:
        yield server


def adapter(server: SendGridServer, limiter: RateLimiter) -> SendGridProvider:
    return SendGridProvider(api_key=KEY, base_url=server.base_url, mail_from=MAIL_FROM, limiter=limiter)


def assert_never_faster_than(calls: list[Call], rate: float, slack: float = 0.25) -> None:
    """Between the arrival of any two accepted calls, no more than ``rate`` per second went out before the later.

    ``slack`` is what the way to the server may shift one arrival against another (the first call also connects;
    the server's thread waits its turn on a busy machine): it matters only over short spans, so a limiter sending
    even 10 % too fast still fails over the whole batch (160 recipients at 40/s: 4 s, against 0.25 s of slack)."""
    accepted = [c for c in calls if c.status < 300]
    for i, first in enumerate(accepted):
        running = 0
        for j in range(i + 1, len(accepted)):
            running += accepted[j - 1].recipients
            allowed = rate * (accepted[j].at - first.at + slack)
            assert running <= allowed, f"{running} recipients in {accepted[j].at - first.at:.3f} s at {rate}/s"


async def test_an_account_allowing_n_per_second_is_never_exceeded_and_the_batch_finishes(sendgrid) -> None:
    rate = 40.0
    limiter = RateLimiter("sendgrid", rate, "test account 40/s")
    provider = adapter(sendgrid, limiter)
    paced = PacedProvider(provider, [limiter])
    messages = [outgoing(i) for i in range(160)]
    report = await deliver(messages, primary=paced, fallback=None, policy=RetryPolicy(max_attempts=2))
    await provider.stop()
    assert all(r.sent for r in report.results)
    assert len(sendgrid.by_recipient()) == 160 and len(sendgrid.delivered) == 160
    assert max(c.recipients for c in sendgrid.calls) <= rate  # no call holds more than a second's worth
    assert_never_faster_than(sendgrid.calls, rate)
    assert paced.describe() == "paced by test account 40/s"


async def test_a_company_cap_below_the_account_paces_that_company(sendgrid) -> None:
    account = RateLimiter("sendgrid", 500, "account 500/s")
    company = RateLimiter("company 7", 25, "company 7 cap 25/s")
    provider = adapter(sendgrid, account)
    paced = PacedProvider(provider, [account, company])
    report = await deliver([outgoing(i) for i in range(75)], primary=paced, fallback=None, policy=RetryPolicy())
    await provider.stop()
    assert all(r.sent for r in report.results)
    assert_never_faster_than(sendgrid.calls, 25)
    assert paced.describe() == "paced by company 7 cap 25/s"


async def test_a_429_storm_slows_the_sends_without_failing_anyone(sendgrid) -> None:
    sendgrid.rate_limit(30, per=1.0)  # the account takes 30 recipients a second, we start unpaced
    limiter = RateLimiter("sendgrid")
    provider = adapter(sendgrid, limiter)
    paced = PacedProvider(provider, [limiter])
    started = time.monotonic()
    messages = [outgoing(i) for i in range(60)]
    report = await deliver(messages, primary=paced, fallback=None,
                           policy=RetryPolicy(max_attempts=1, base_delay=0.05, max_delay=0.5))
    await provider.stop()
    assert all(r.sent and r.attempts == 1 for r in report.results)  # no attempt spent on throttling
    assert len(sendgrid.by_recipient()) == 60 and len(sendgrid.delivered) == 60
    assert any(c.status == 429 for c in sendgrid.calls) and limiter.throttles >= 1
    assert limiter.rate is not None  # it slowed down to a rate of its own
    assert time.monotonic() - started >= 1.0  # 60 at 30/s cannot take less (a floor, not a speed target)


async def test_ses_is_paced_by_the_quota_the_account_reports(moto: MotoServer) -> None:
    moto.reset()
    client = boto3.client("sesv2", region_name="eu-west-1", endpoint_url=moto.endpoint_url,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_email_identity(EmailIdentity=MAIL_DOMAIN)
    client.close()
    settings = Settings(environment="test", aws_endpoint_url=moto.endpoint_url, aws_access_key_id="testing",
                        aws_secret_access_key="testing", mail_from=MAIL_FROM)
    providers = EmailProviders(settings)
    await providers.read_ses_quota()
    limiter = providers.limiters["ses"]
    assert limiter.describe() == "paced by SES max send rate 1/s"  # moto's sandbox quota
    paced = PacedProvider(providers.ses, [limiter])
    started = time.monotonic()
    report = await deliver([outgoing(i) for i in range(3)], primary=paced, fallback=None, policy=RetryPolicy())
    elapsed = time.monotonic() - started
    await providers.stop()
    assert all(r.sent for r in report.results) and len(moto.sent_emails()) == 3
    assert elapsed >= 1.9  # three messages at 1/s: the second a second after the first, the third after two


async def test_an_unreadable_quota_keeps_ses_unpaced_and_says_so() -> None:
    from tests.support.email import closed_port

    settings = Settings(environment="test", aws_endpoint_url=f"http://127.0.0.1:{closed_port()}",
                        aws_access_key_id="testing", aws_secret_access_key="testing")
    providers = EmailProviders(settings)
    await asyncio.wait_for(providers.read_ses_quota(), 30)
    await providers.stop()
    assert providers.limiters["ses"].rate is None
    assert providers.limiters["ses"].describe() == "ses: not paced"
