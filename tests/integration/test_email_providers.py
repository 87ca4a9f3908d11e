"""Email providers and delivery against real servers: an aiosmtpd sink on loopback and moto's SES v2 server."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import json
import random
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import boto3
import pytest

from adapters.email.base import Outcome, ProviderUnavailable
from adapters.email.delivery import FinalResult, RetryPolicy, deliver
from adapters.email.ses import SesProvider
from adapters.email.smtp import SmtpProvider
from adapters.email.smtp_pipelining import ReplyKeepingProtocol
from devtools.devmail import DevMailSink
from resilience.dependencies import Dependencies, recheck_lost
from tests.support.email import MAIL_DOMAIN, MAIL_FROM, RecordingSleep, address_of, closed_port, outgoing
from tests.support.moto_server import MotoServer, moto_server

pytestmark = pytest.mark.integration
REGION = "eu-west-1"


@pytest.fixture(params=[(True, True), (True, False), (False, True)], ids=["chunking", "pipelining", "lockstep"])
def sink(request: pytest.FixtureRequest) -> Iterator[DevMailSink]:
    """The sink advertising PIPELINING and CHUNKING, as Postfix and Exim do (the client keeps a window of BDAT
    transactions on each session), PIPELINING alone (it pipelines each envelope with DATA), or CHUNKING alone (it
    sends in lockstep: BDAT's gain needs pipelining)."""
    pipelining, chunking = request.param
    with DevMailSink(pipelining=pipelining, chunking=chunking) as running:
        yield running


@pytest.fixture
async def smtp(sink: DevMailSink) -> AsyncIterator[SmtpProvider]:
    provider = SmtpProvider("127.0.0.1", sink.port, mail_from=MAIL_FROM, connections=4, timeout=5)
    await provider.start()
    yield provider
    await provider.stop()


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        yield server


@pytest.fixture
def ses_endpoint(moto: MotoServer) -> str:
    moto.reset()
    client = boto3.client(
        "sesv2", region_name=REGION, endpoint_url=moto.endpoint_url,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    client.create_email_identity(EmailIdentity=MAIL_DOMAIN)
    client.close()
    return moto.endpoint_url


def ses_provider(endpoint_url: str, **kwargs: object) -> SesProvider:
    return SesProvider(
        region=REGION, mail_from=MAIL_FROM, endpoint_url=endpoint_url, access_key_id="testing",
        secret_access_key="testing", **kwargs,  # type: ignore[arg-type]
    )


def fast_policy(max_attempts: int = 3, **kwargs: object) -> RetryPolicy:
    return RetryPolicy(max_attempts=max_attempts, base_delay=0.01, max_delay=0.05, **kwargs)  # type: ignore[arg-type]


# ---- SMTP ---------------------------------------------------------------------------------------------
async def test_every_recipient_gets_exactly_its_own_message(sink: DevMailSink, smtp: SmtpProvider) -> None:
    messages = [outgoing(i) for i in range(120)]
    results = await smtp.send_batch(messages)
    assert [r.key for r in results] == [m.key for m in messages]
    assert all(r.outcome is Outcome.SENT for r in results)
    assert len({r.provider_message_id for r in results}) == 120  # the sink's queue ids
    received = sink.by_recipient()
    assert sink.count() == 120 and len(received) == 120
    for msg in messages:
        (got,) = received[msg.to_address]
        assert got.raw == msg.raw and got.message_id == msg.message_id and got.mail_from == MAIL_FROM
        parsed = email.message_from_bytes(got.raw, policy=email.policy.default)
        assert parsed["To"].addresses[0].display_name == msg.to_name


async def test_the_client_pipelines_only_where_the_relay_advertises_it(sink: DevMailSink) -> None:
    for offered in (True, False):
        provider = SmtpProvider("127.0.0.1", sink.port, mail_from=MAIL_FROM, connections=1, timeout=5,
                                pipelining=offered)
        await provider.start()
        try:
            (result,) = await provider.send_batch([outgoing(1)])
            assert result.outcome is Outcome.SENT
            session = provider._slots[0]
            assert session is not None
            assert isinstance(session.protocol, ReplyKeepingProtocol) is (offered and sink.pipelining)
        finally:
            await provider.stop()


async def test_lines_starting_with_a_dot_arrive_unchanged(sink: DevMailSink, smtp: SmtpProvider) -> None:
    # The SMTP adapter writes DATA itself (dot-stuffing and the end mark): the server must get the bytes back.
    base = outgoing(1)
    raw = base.raw.replace(b"\r\n\r\n", b"\r\n\r\n.one dot\r\n..two dots\r\n.\r\n", 1)
    message = dataclasses.replace(base, raw=raw)
    (result,) = await smtp.send_batch([message])
    assert result.outcome is Outcome.SENT
    (got,) = sink.by_recipient()[message.to_address]
    assert got.raw == raw


async def test_an_internationalised_domain_is_sent_with_its_idna_form_in_the_envelope(
        sink: DevMailSink, smtp: SmtpProvider) -> None:
    # Intake accepts an IDN domain (content.email.address_problem) and the composer writes it IDNA-encoded in To:;
    # the envelope must carry the same ASCII form (the adapter writes RCPT TO itself), not refuse the learner.
    message = dataclasses.replace(outgoing(1), to_address="learner@bücher.de")
    (result,) = await smtp.send_batch([message])
    assert result.outcome is Outcome.SENT, result.error
    (got,) = sink.by_recipient()["learner@xn--bcher-kva.de"]
    assert got.raw == message.raw


async def until(condition: Callable[[], bool], *, seconds: float) -> bool:
    """Poll ``condition`` on the running loop until it holds or ``seconds`` have passed; returns its last value."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    return condition()


async def test_a_reply_that_never_comes_times_out_and_the_session_is_reopened(sink: DevMailSink) -> None:
    provider = SmtpProvider("127.0.0.1", sink.port, mail_from=MAIL_FROM, connections=1, timeout=3)
    await provider.start()
    try:
        sink.hold_after(0)  # DATA is never answered until released
        (result,) = await provider.send_batch([outgoing(1)])
        assert (result.outcome, result.error) == (Outcome.RETRY, "timeout waiting for the smtp server")
        sink.release()
        (again,) = await provider.send_batch([outgoing(2)])
        assert again.outcome is Outcome.SENT
        assert await until(lambda: address_of(2) in sink.by_recipient(), seconds=10)
    finally:
        sink.release()
        await provider.stop()


async def one_session(sink: DevMailSink) -> SmtpProvider:
    """A provider with one session: its messages go out in order, each next envelope behind a content."""
    provider = SmtpProvider("127.0.0.1", sink.port, mail_from=MAIL_FROM, connections=1, timeout=5)
    await provider.start()
    return provider


async def test_a_refused_content_fails_only_its_own_message_while_the_next_envelope_is_on_its_way(
        sink: DevMailSink) -> None:
    # Pipelined, the next message's MAIL, RCPT and DATA follow a content in the same write: after refusing that
    # content the server goes on to them, so no RSET may be sent (it would become the next message's content).
    provider = await one_session(sink)
    try:
        sink.refuse_content(address_of(1), code=554)
        sink.refuse_content(address_of(3), code=450, text="Local problem in processing")
        messages = [outgoing(i) for i in range(5)]
        results = await provider.send_batch(messages)
        assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED, Outcome.SENT, Outcome.RETRY,
                                                Outcome.SENT]
        assert (results[1].error, results[3].error) == ("554 Message content rejected", "450 Local problem in processing")
        received = sink.by_recipient()
        assert sorted(received) == sorted(address_of(i) for i in (0, 2, 4))
        for i in (0, 2, 4):
            (got,) = received[address_of(i)]
            assert got.raw == messages[i].raw
    finally:
        await provider.stop()


async def test_a_session_lost_at_a_content_sends_that_message_and_the_next_once_each(sink: DevMailSink) -> None:
    # The next message's envelope was on the lost session too, but never its content: it is sent afterwards.
    provider = await one_session(sink)
    try:
        sink.drop_at_content(address_of(1))
        messages = [outgoing(i) for i in range(4)]
        results = await provider.send_batch(messages)
        assert [r.outcome for r in results] == [Outcome.SENT] * 4
        assert sink.recipient_counts() == {address_of(i): 1 for i in range(4)}
        assert all(sink.by_recipient()[m.to_address][0].raw == m.raw for m in messages)
    finally:
        await provider.stop()


async def send_and_cancel_while_held(provider: SmtpProvider, sink: DevMailSink) -> None:
    """Send learners 0-2, cancel the batch once the sink holds a reply (the test chose which), then release it."""
    cancelled = asyncio.create_task(provider.send_batch([outgoing(i) for i in range(3)]))
    await until(lambda: sink.holding() > 0, seconds=10)
    assert sink.holding() == 1
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    sink.release()


@pytest.mark.parametrize("held", ["content", "mail"])
async def test_a_batch_cancelled_mid_message_leaves_no_session_whose_replies_are_still_coming(
        sink: DevMailSink, held: str) -> None:
    # A batch's other chunks are cancelled when one fails (an outcome not written while the broker is away) or
    # the batch is given up. The session a chunk held still has replies on their way (and, pipelined, the next
    # envelope); used again, the next batch's commands were paired with them. The worst case ("mail": MAIL, RCPT
    # and DATA written, none answered): the next batch's MAIL, RCPT and DATA went to the relay as the cancelled
    # message's content, paired with the stale 250, 250 and 354, and the next learner's whole message followed,
    # delivered to the cancelled learner, while the next learner's result said SENT (seen on the code before:
    # learner 1 got learner 10's message).
    provider = await one_session(sink)
    try:
        if held == "content":
            sink.hold_after(1)  # the second message's content is answered only after release()
        else:
            sink.hold_mail_after(1)  # the second message's MAIL is answered only after release()
        await send_and_cancel_while_held(provider, sink)
        later = [outgoing(i) for i in range(10, 14)]
        results = await provider.send_batch(later)
        assert [r.outcome for r in results] == [Outcome.SENT] * 4
        received = sink.by_recipient()
        for message in later:
            (got,) = received[message.to_address]
            assert got.raw == message.raw
        # Learner 1's content went out before the cancel when its reply was held: the relay may have kept it.
        maybe = {address_of(1)} if held == "content" else set()
        assert set(received) - maybe == {address_of(0), *(m.to_address for m in later)}
        assert all(len(got) == 1 for got in received.values())
    finally:
        sink.release()
        await provider.stop()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_every_result_is_what_the_relay_did_with_that_message_whatever_goes_wrong_where(
        sink: DevMailSink, seed: int) -> None:
    # Refusals at RCPT and at the content, and sessions lost at a content, spread at random over chunks sent at
    # once on four sessions, as the worker sends: each message's result must be what the relay did with exactly
    # that message, and what the relay received must be exactly the messages said to be sent, each once, intact.
    rng = random.Random(seed)
    provider = SmtpProvider("127.0.0.1", sink.port, mail_from=MAIL_FROM, connections=4, timeout=5)
    await provider.start()
    try:
        messages = [outgoing(i) for i in range(100)]
        fates = [rng.choice(["ok", "ok", "ok", "rcpt-550", "rcpt-450", "content-554", "dropped"]) for _ in messages]
        for message, fate in zip(messages, fates, strict=True):
            if fate == "rcpt-550":
                sink.reject(message.to_address)
            elif fate == "rcpt-450":
                sink.fail_next(message.to_address, code=450, text="Mailbox busy")
            elif fate == "content-554":
                sink.refuse_content(message.to_address)
            elif fate == "dropped":
                sink.drop_at_content(message.to_address)  # once: sent on the reopened session
        chunks = [messages[i:i + 25] for i in range(0, len(messages), 25)]
        results = [r for part in await asyncio.gather(*(provider.send_batch(c) for c in chunks)) for r in part]
        expected = {"ok": Outcome.SENT, "dropped": Outcome.SENT, "rcpt-550": Outcome.FAILED,
                    "rcpt-450": Outcome.RETRY, "content-554": Outcome.FAILED}
        assert [(r.key, r.outcome) for r in results] == [(m.key, expected[f]) for m, f in zip(messages, fates,
                                                                                                strict=True)]
        received = sink.by_recipient()
        sent = [m for m, r in zip(messages, results, strict=True) if r.outcome is Outcome.SENT]
        assert sorted(received) == sorted(m.to_address for m in sent)
        for message in sent:
            (got,) = received[message.to_address]
            assert got.raw == message.raw
    finally:
        await provider.stop()


async def test_smtp_reply_codes_map_to_outcomes(sink: DevMailSink, smtp: SmtpProvider) -> None:
    sink.fail_next(address_of(1), code=450, text="Mailbox busy")
    sink.reject(address_of(2))
    sink.fail_next(address_of(3), code=451, text="Requested action aborted")
    sink.fail_next(address_of(4), code=450, text="Sending rate exceeded for this account")
    results = await smtp.send_batch([outgoing(i) for i in range(5)])
    outcomes = [r.outcome for r in results]
    assert outcomes == [Outcome.SENT, Outcome.RETRY, Outcome.FAILED, Outcome.THROTTLED, Outcome.THROTTLED]
    assert results[1].error == "450 Mailbox busy"
    assert results[2].error == "550 No such user here"
    assert set(sink.by_recipient()) == {address_of(0)}
    # The refused transactions were reset: the same sessions deliver the next batch normally.
    again = await smtp.send_batch([outgoing(i) for i in range(1, 5)])
    assert [r.outcome for r in again] == [Outcome.SENT, Outcome.FAILED, Outcome.SENT, Outcome.SENT]


async def test_transient_failures_are_retried_until_sent(sink: DevMailSink, smtp: SmtpProvider) -> None:
    sink.fail_next(address_of(3), code=450, times=2)
    sleep, seen = RecordingSleep(), []
    report = await deliver(
        [outgoing(i) for i in range(6)], primary=smtp, fallback=None, policy=fast_policy(5),
        on_result=seen.append, sleep=sleep,
    )
    assert all(r.sent for r in report.results) and not report.fell_back
    assert {r.key: r.attempts for r in report.results} == {"0": 1, "1": 1, "2": 1, "3": 3, "4": 1, "5": 1}
    assert len(sleep.delays) == 2 and sorted(r.key for r in seen) == [str(i) for i in range(6)]
    assert {k: len(v) for k, v in sink.by_recipient().items()} == {address_of(i): 1 for i in range(6)}


async def test_permanent_and_exhausted_failures_are_final(sink: DevMailSink, smtp: SmtpProvider) -> None:
    sink.reject(address_of(1))
    sink.fail_next(address_of(2), code=450, times=100)
    report = await deliver(
        [outgoing(i) for i in range(3)], primary=smtp, fallback=None, policy=fast_policy(3), sleep=RecordingSleep()
    )
    by_key = {r.key: r for r in report.results}
    assert by_key["0"].sent and by_key["0"].provider == "smtp"
    assert (by_key["1"].sent, by_key["1"].retryable, by_key["1"].attempts) == (False, False, 1)
    assert by_key["1"].error == "550 No such user here"
    assert (by_key["2"].sent, by_key["2"].retryable, by_key["2"].attempts) == (False, True, 3)
    assert set(sink.by_recipient()) == {address_of(0)}


async def test_throttling_slows_down_without_spending_attempts(sink: DevMailSink, smtp: SmtpProvider) -> None:
    sink.throttle_next(6)  # 421 on the next six MAIL FROM, whoever sends them
    sleep = RecordingSleep()
    report = await deliver(
        [outgoing(i) for i in range(10)], primary=smtp, fallback=None, policy=fast_policy(1), sleep=sleep
    )
    assert all(r.sent and r.attempts == 1 for r in report.results)  # max_attempts=1, yet all got through
    assert len(sleep.delays) >= 1
    assert sink.count() == 10 and len(sink.by_recipient()) == 10


async def test_endless_throttling_is_bounded(sink: DevMailSink, smtp: SmtpProvider) -> None:
    sink.throttle_next(10_000, code=454)
    sleep = RecordingSleep()
    report = await deliver(
        [outgoing(i) for i in range(3)], primary=smtp, fallback=None,
        policy=fast_policy(2, max_throttle_rounds=4), sleep=sleep,
    )
    assert len(sleep.delays) == 4
    assert all(not r.sent and r.retryable for r in report.results)
    assert report.results[0].error == "smtp throttled beyond 4 rounds"


async def test_dropped_connections_are_reopened(sink: DevMailSink) -> None:
    port = sink.port
    provider = SmtpProvider("127.0.0.1", port, mail_from=MAIL_FROM, connections=3, timeout=5)
    try:
        assert all(r.outcome is Outcome.SENT for r in await provider.send_batch([outgoing(i) for i in range(6)]))
        sink.stop()  # the relay restarts: every pooled session is now dead
        with DevMailSink(port=port) as restarted:
            results = await provider.send_batch([outgoing(i) for i in range(6, 12)])
            assert all(r.outcome is Outcome.SENT for r in results)
            assert sorted(restarted.by_recipient()) == sorted(address_of(i) for i in range(6, 12))
            assert restarted.count() == 6
    finally:
        await provider.stop()


async def test_unreachable_smtp_is_provider_unavailable() -> None:
    provider = SmtpProvider("127.0.0.1", closed_port(), mail_from=MAIL_FROM, connections=2, timeout=2)
    with pytest.raises(ProviderUnavailable):
        await provider.start()
    with pytest.raises(ProviderUnavailable, match="smtp 127.0.0.1"):
        await provider.send_batch([outgoing(0)])
    await provider.stop()


async def test_a_relay_that_goes_away_is_down_in_the_dependency_record_until_it_answers_again(
        sink: DevMailSink) -> None:
    deps, port = Dependencies(), sink.port
    provider = SmtpProvider("127.0.0.1", port, mail_from=MAIL_FROM, connections=2, timeout=5, dependencies=deps)
    try:
        assert deps.snapshot()["smtp-relay"].up  # listed from the start
        await provider.send_batch([outgoing(0)])
        sink.stop()
        with pytest.raises(ProviderUnavailable):
            await provider.send_batch([outgoing(1)])
        assert deps.down()["smtp-relay"].startswith(f"127.0.0.1:{port}: ")
        with DevMailSink(port=port):
            assert (await provider.send_batch([outgoing(2)]))[0].outcome is Outcome.SENT
        state = deps.snapshot()["smtp-relay"]
        assert (state.up, state.losses, state.reconnects) == (True, 1, 1)
    finally:
        await provider.stop()


async def test_a_lost_relay_is_asked_again_by_health_and_back_without_another_batch(sink: DevMailSink) -> None:
    # An idle worker whose relay came back must not say it is lost until its next batch: recheck_lost (what
    # the worker's health runs) opens and QUITs a session while the relay is lost.
    deps, port = Dependencies(), sink.port
    provider = SmtpProvider("127.0.0.1", port, mail_from=MAIL_FROM, connections=2, timeout=5, dependencies=deps)
    watch = asyncio.create_task(recheck_lost(deps, interval=0.05, timeout=5))
    try:
        sink.stop()
        with pytest.raises(ProviderUnavailable):
            await provider.send_batch([outgoing(0)])
        assert set(deps.rechecks()) == {"smtp-relay"}
        await asyncio.sleep(0.3)  # asked several times meanwhile: still lost, with the relay's address
        assert deps.down()["smtp-relay"].startswith(f"127.0.0.1:{port}: ")
        assert deps.snapshot()["smtp-relay"].losses == 1
        with DevMailSink(port=port) as back:
            async with asyncio.timeout(10):
                while not deps.snapshot()["smtp-relay"].up:
                    await asyncio.sleep(0.02)
            assert back.count() == 0  # asked, nothing sent
        state = deps.snapshot()["smtp-relay"]
        assert (state.losses, state.reconnects) == (1, 1) and deps.rechecks() == {}
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await provider.stop()


async def test_starttls_and_auth_flags_are_honoured(sink: DevMailSink) -> None:
    # The dev sink offers neither STARTTLS nor AUTH: a provider configured to require them must refuse to
    # send in clear text, and its error must not carry the password.
    for options in ({"starttls": True}, {"username": "moodle", "password": "s3cret-pass"}):
        provider = SmtpProvider("127.0.0.1", sink.port, mail_from=MAIL_FROM, connections=1, **options)  # type: ignore[arg-type]
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.start()
        assert "s3cret" not in str(caught.value)
        await provider.stop()
    assert sink.count() == 0


# ---- SES v2 on moto ---------------------------------------------------------------------------------
async def test_ses_sends_raw_messages(moto: MotoServer, ses_endpoint: str) -> None:
    provider = ses_provider(ses_endpoint, concurrency=4)
    messages = [outgoing(i) for i in range(25)]
    try:
        results = await provider.send_batch(messages)
    finally:
        await provider.stop()
    assert [r.key for r in results] == [m.key for m in messages]
    assert all(r.outcome is Outcome.SENT and r.provider_message_id for r in results)
    sent = moto.sent_emails()
    assert sorted(s["id"] for s in sent) == sorted(r.provider_message_id for r in results)
    assert Counter(s["destinations"][0] for s in sent) == Counter(m.to_address for m in messages)
    by_address = {s["destinations"][0]: s["raw_data"] for s in sent}
    assert all(f"Message-ID: {m.message_id}" in by_address[m.to_address] for m in messages)


async def test_ses_rejects_an_unverified_sender(moto: MotoServer) -> None:
    moto.reset()  # no identity at all
    provider = ses_provider(moto.endpoint_url)
    try:
        (result,) = await provider.send_batch([outgoing(0)])
    finally:
        await provider.stop()
    assert result.outcome is Outcome.FAILED and result.error and result.error.startswith("MessageRejected")
    assert moto.sent_emails() == []


async def test_unreachable_ses_is_provider_unavailable() -> None:
    provider = ses_provider(f"http://127.0.0.1:{closed_port()}")
    try:
        with pytest.raises(ProviderUnavailable, match="Could not connect"):
            await provider.send_batch([outgoing(i) for i in range(3)])
    finally:
        await provider.stop()


async def test_unreachable_ses_falls_back_to_smtp(sink: DevMailSink, smtp: SmtpProvider) -> None:
    ses = ses_provider(f"http://127.0.0.1:{closed_port()}")
    messages = [outgoing(i) for i in range(40)]
    seen: list[FinalResult] = []

    async def record(result: FinalResult) -> None:
        seen.append(result)

    sleep = RecordingSleep()
    try:
        report = await deliver(messages, primary=ses, fallback=smtp, policy=fast_policy(3), on_result=record, sleep=sleep)
    finally:
        await ses.stop()
    assert report.fell_back and report.fallback_reason
    assert report.fallback_reason.startswith("ses unavailable: Could not connect to the endpoint URL")
    assert len(sleep.delays) == 2  # three tries of SES, two waits in between
    assert [r.key for r in report.results] == [m.key for m in messages]
    assert all(r.sent and r.provider == "smtp" for r in report.results)
    assert Counter(r.key for r in seen) == Counter(m.key for m in messages)
    assert {k: len(v) for k, v in sink.by_recipient().items()} == {m.to_address: 1 for m in messages}


async def test_without_fallback_an_unreachable_provider_fails_retryable() -> None:
    ses = ses_provider(f"http://127.0.0.1:{closed_port()}")
    try:
        report = await deliver([outgoing(0), outgoing(1)], primary=ses, fallback=None, policy=fast_policy(2), sleep=RecordingSleep())
    finally:
        await ses.stop()
    assert not report.fell_back
    assert all(not r.sent and r.retryable and r.provider == "ses" for r in report.results)


# ---- the sink itself ------------------------------------------------------------------------------------
async def test_sink_spools_json_lines(tmp_path: Path) -> None:
    with DevMailSink(keep_messages=False, spool_dir=tmp_path) as spool_sink:
        provider = SmtpProvider("127.0.0.1", spool_sink.port, mail_from=MAIL_FROM, connections=2)
        await provider.send_batch([outgoing(i) for i in range(5)])
        await provider.stop()
    lines = [json.loads(line) for line in (tmp_path / "received.jsonl").read_text("utf-8").splitlines()]
    assert sorted(line["rcpt"][0] for line in lines) == sorted(address_of(i) for i in range(5))
    assert {line["subject"] for line in lines} == {outgoing(i).subject for i in range(5)}
    assert all(line["size"] > 300 and line["message_id"].startswith("<") for line in lines)
    assert list(tmp_path.glob("*.eml")) == []


async def test_sink_runs_standalone(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.devmail", "--host", "127.0.0.1", "--port", "0", "--spool", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        ready = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=20)
        assert ready.startswith("devmail listening on 127.0.0.1:")
        port = int(ready.split()[3].rsplit(":", 1)[1])
        provider = SmtpProvider("127.0.0.1", port, mail_from=MAIL_FROM, connections=2)
        assert all(r.outcome is Outcome.SENT for r in await provider.send_batch([outgoing(i) for i in range(4)]))
        await provider.stop()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    assert len((tmp_path / "received.jsonl").read_text("utf-8").splitlines()) == 4
