"""SendGrid and Mailgun adapters against local servers that check each request as the providers document it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from adapters.email.base import Outcome, ProviderUnavailable
from adapters.email.delivery import RetryPolicy, deliver
from adapters.email.http_api import HttpEmailProvider
from adapters.email.mailgun import MailgunProvider
from adapters.email.pacing import PacedProvider, RateLimiter
from adapters.email.sendgrid import SendGridProvider
from adapters.email.smtp import SmtpProvider
from devtools.devmail import DevMailSink
from devtools.provider_servers import MailgunServer, SendGridServer
from tests.support.email import MAIL_FROM, RecordingSleep, address_of, closed_port, outgoing

pytestmark = pytest.mark.integration
SG_KEY = "SG.test-key-0123456789"
MG_KEY = "key-0123456789abcdef"
DOMAIN = "mg.example.org"
PROVIDERS = ["sendgrid", "mailgun"]


@pytest.fixture
def sendgrid_server() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=SG_KEY) as server:
        yield server


@pytest.fixture
def mailgun_server() -> Iterator[MailgunServer]:
    with MailgunServer(api_key=MG_KEY, domain=DOMAIN) as server:
        yield server


@pytest.fixture(params=PROVIDERS)
def server(request: pytest.FixtureRequest) -> Iterator[SendGridServer | MailgunServer]:
    kind = SendGridServer(api_key=SG_KEY) if request.param == "sendgrid" else MailgunServer(api_key=MG_KEY,
                                                                                              domain=DOMAIN)
    with kind as running:
        yield running


def make(server: SendGridServer | MailgunServer, *, key: str | None = None, limiter: RateLimiter | None = None,
         base_url: str | None = None) -> HttpEmailProvider:
    url = base_url or server.base_url
    if isinstance(server, SendGridServer):
        return SendGridProvider(api_key=key or SG_KEY, base_url=url, mail_from=MAIL_FROM, mail_from_name="Moodle",
                                timeout=10, limiter=limiter)
    return MailgunProvider(api_key=key or MG_KEY, domain=DOMAIN, base_url=url, mail_from=MAIL_FROM,
                           mail_from_name="Moodle", timeout=10, limiter=limiter)


@pytest.fixture
async def provider(server: SendGridServer | MailgunServer) -> AsyncIterator[HttpEmailProvider]:
    adapter = make(server)
    await adapter.start()
    yield adapter
    await adapter.stop()


def fast_policy(max_attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(max_attempts=max_attempts, base_delay=0.01, max_delay=0.05)


def assert_each_once_with_own_content(server: SendGridServer | MailgunServer, messages: list) -> None:
    got = server.by_recipient()
    assert sorted(got) == sorted(m.to_address for m in messages)
    for msg in messages:
        (one,) = got[msg.to_address]
        assert (one.subject, one.text, one.html, one.name) == (msg.subject, msg.text, msg.html, msg.to_name)
        assert one.message_id == msg.message_id


# ---- the batch form, per-learner content ------------------------------------------------------------------
async def test_a_batch_goes_out_in_one_call_with_each_learners_own_content(server, provider) -> None:
    messages = [outgoing(i, name=f"Learner {i} Ünïcode") for i in range(250)]
    results = await provider.send_batch(messages)
    assert [r.outcome for r in results] == [Outcome.SENT] * 250
    assert len(server.calls) == 1 and server.calls[0].recipients == 250
    assert_each_once_with_own_content(server, messages)
    assert all(r.provider_message_id for r in results)
    expected = "application/json" if isinstance(server, SendGridServer) else "multipart/form-data"
    assert server.calls[0].content_type.startswith(expected)


async def test_more_than_a_thousand_learners_take_several_calls(server, provider) -> None:
    messages = [outgoing(i) for i in range(2300)]
    results = await provider.send_batch(messages)
    assert all(r.outcome is Outcome.SENT for r in results)
    assert [c.recipients for c in server.calls] == [1000, 1000, 300]
    assert len(server.delivered) == 2300 and len(server.by_recipient()) == 2300


async def test_a_message_too_big_for_substitutions_is_sent_on_its_own(sendgrid_server) -> None:
    provider = make(sendgrid_server)
    messages = [outgoing(i) for i in range(5)]
    big = outgoing(5)
    messages.append(type(big)(**{**{f: getattr(big, f) for f in big.__slots__}, "html": "<p>" + "x" * 12_000 + "</p>"}))
    results = await provider.send_batch(messages)
    await provider.stop()
    assert all(r.outcome is Outcome.SENT for r in results)
    assert [c.recipients for c in sendgrid_server.calls] == [5, 1]
    assert_each_once_with_own_content(sendgrid_server, messages)


async def test_mailgun_sends_a_repeated_address_in_a_later_call(mailgun_server) -> None:
    provider = make(mailgun_server)
    messages = [outgoing(1), outgoing(2), outgoing(3, address=address_of(1))]
    results = await provider.send_batch(messages)
    await provider.stop()
    assert all(r.outcome is Outcome.SENT for r in results)
    assert [c.recipients for c in mailgun_server.calls] == [2, 1]
    assert sorted(d.subject for d in mailgun_server.by_recipient()[address_of(1)]) == sorted(
        [messages[0].subject, messages[2].subject])


# ---- error mapping, one test each -------------------------------------------------------------------------
async def test_400_fails_only_the_learner_the_provider_refused(server, provider) -> None:
    server.reject(address_of(7))
    messages = [outgoing(i) for i in range(20)]
    results = await provider.send_batch(messages)
    by_key = {r.key: r for r in results}
    assert by_key["7"].outcome is Outcome.FAILED and "400" in (by_key["7"].error or "")
    assert all(r.outcome is Outcome.SENT for k, r in by_key.items() if k != "7")
    assert_each_once_with_own_content(server, [m for m in messages if m.key != "7"])
    if isinstance(server, SendGridServer):  # SendGrid names personalizations.7: one more call, no search
        assert len(server.calls) == 2
    else:  # Mailgun does not say which: halving finds it in a few calls
        assert 2 < len(server.calls) <= 2 * 5 + 1


async def test_400_is_permanent_through_delivery(server, provider) -> None:
    server.reject(address_of(2))
    report = await deliver([outgoing(i) for i in range(4)], primary=provider, fallback=None,
                           policy=fast_policy(), sleep=RecordingSleep())
    by_key = {r.key: r for r in report.results}
    assert (by_key["2"].sent, by_key["2"].retryable, by_key["2"].attempts) == (False, False, 1)
    assert [by_key[k].sent for k in "013"] == [True, True, True]


@pytest.mark.parametrize("status", [401, 403])
async def test_credentials_refused_fall_back_and_say_why(server, status: int, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = make(server, key="wrong-key") if status == 401 else make(server)
    if status == 403:
        server.inject(403, times=100, body={"errors": [{"message": "access forbidden", "field": None}]}
                      if isinstance(server, SendGridServer) else {"message": "Forbidden"})
    with DevMailSink() as sink:
        smtp = SmtpProvider("127.0.0.1", sink.port, mail_from=MAIL_FROM, connections=2, timeout=5)
        report = await deliver([outgoing(i) for i in range(3)], primary=wrong, fallback=smtp,
                               policy=fast_policy(2), sleep=RecordingSleep())
        await smtp.stop()
        assert sink.count() == 3
    await wrong.stop()
    assert report.fell_back and all(r.sent and r.provider == "smtp" for r in report.results)
    assert f"({status})" in (report.fallback_reason or "") and "API key" in (report.fallback_reason or "")
    assert server.delivered == []
    for secret in (SG_KEY, MG_KEY):
        assert secret not in (report.fallback_reason or "") and secret not in caplog.text


async def test_413_splits_the_call(server, provider) -> None:
    server.inject(413, body={"errors": [{"message": "Request entity too large", "field": None}]}
                  if isinstance(server, SendGridServer) else {"message": "Request Entity Too Large"})
    messages = [outgoing(i) for i in range(40)]
    results = await provider.send_batch(messages)
    assert all(r.outcome is Outcome.SENT for r in results)
    assert [c.recipients for c in server.calls if c.status < 300] == [20, 20]
    assert_each_once_with_own_content(server, messages)


async def test_429_waits_for_the_reset_without_spending_attempts(server) -> None:
    limiter = RateLimiter(server.name)
    provider = make(server, limiter=limiter)
    header = {"X-RateLimit-Reset": "1"} if isinstance(server, SendGridServer) else {"Retry-After": "1"}
    if isinstance(server, SendGridServer):  # SendGrid's reset is a unix time
        import time

        header = {"X-RateLimit-Reset": str(int(time.time()) + 10), "X-RateLimit-Remaining": "0"}  # no real wait
    server.inject(429, times=2, headers=header)
    sleep = RecordingSleep()
    paced = PacedProvider(provider, [limiter], sleep=sleep)
    report = await deliver([outgoing(i) for i in range(10)], primary=paced, fallback=None,
                           policy=fast_policy(1), sleep=RecordingSleep())
    await provider.stop()
    assert all(r.sent and r.attempts == 1 for r in report.results)  # max_attempts=1, yet all got through
    assert limiter.throttles == 2
    assert sleep.delays and max(sleep.delays) > 0.5  # the limiter held the next call until the reset
    assert len(server.delivered) == 10


async def test_5xx_is_retried(server, provider) -> None:
    server.inject(503, times=2)
    report = await deliver([outgoing(i) for i in range(5)], primary=provider, fallback=None,
                           policy=fast_policy(3), sleep=RecordingSleep())
    assert all(r.sent and r.attempts == 3 for r in report.results)
    assert_each_once_with_own_content(server, [outgoing(i) for i in range(5)])


async def test_5xx_past_the_budget_fails_retryably(server, provider) -> None:
    server.inject(500, times=100)
    report = await deliver([outgoing(i) for i in range(3)], primary=provider, fallback=None,
                           policy=fast_policy(2), sleep=RecordingSleep())
    assert all(not r.sent and r.retryable and r.attempts == 2 for r in report.results)
    assert server.delivered == []


async def test_an_unreachable_api_is_unavailable(server) -> None:
    provider = make(server, base_url=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ProviderUnavailable, match="unreachable"):
        await provider.send_batch([outgoing(0)])
    await provider.stop()


async def test_on_result_reports_each_learner_at_its_index(server, provider) -> None:
    server.reject(address_of(3))
    seen: list[tuple[int, str]] = []
    messages = [outgoing(i) for i in range(6)]
    await provider.send_batch(messages, on_result=lambda i, r: seen.append((i, r.key)))
    assert sorted(seen) == [(i, str(i)) for i in range(6)]


async def test_a_mailgun_domain_the_account_does_not_have_is_a_configuration_error(mailgun_server) -> None:
    provider = MailgunProvider(api_key=MG_KEY, domain="other.example.org", base_url=mailgun_server.base_url,
                               mail_from=MAIL_FROM)
    with pytest.raises(ProviderUnavailable, match=r"mailgun refused the credentials \(404\).*Domain not found"):
        await provider.send_batch([outgoing(0)])
    await provider.stop()
    assert mailgun_server.delivered == []


async def test_an_exhausted_rate_limit_window_holds_the_next_call_until_its_reset(server) -> None:
    limiter = RateLimiter(server.name)
    provider = make(server, limiter=limiter)
    sleep = RecordingSleep()
    paced = PacedProvider(provider, [limiter], sleep=sleep)
    server.exhaust_window(10.0)  # accepted, but "X-RateLimit-Remaining: 0" until the reset (10-11 s away)
    first = await paced.send_batch([outgoing(i) for i in range(3)])
    assert limiter.describe().startswith(f"paused by {server.name} rate-limit window")
    second = await paced.send_batch([outgoing(i) for i in range(3, 6)])
    await provider.stop()
    assert all(r.outcome is Outcome.SENT for r in first + second) and len(server.delivered) == 6
    assert len(sleep.delays) == 1 and 5.0 < sleep.delays[0] <= 11.1  # however long the calls took meanwhile
    assert limiter.throttles == 0  # a full window is not throttling: nothing was refused
