"""The local route through a real Postfix (tests/support/postfix.py), the relay most sites run, instead of the dev
sink alone: Postfix answers the worker's pipelined BDAT windows, refuses and defers recipients as a site's relay
would, closes idle sessions, asks for STARTTLS and AUTH on submission terms, and relays every message on to the
test's sink."""

from __future__ import annotations

import asyncio
import re
import secrets
import smtplib
from collections import Counter

import pytest

from adapters.email.base import Outcome, ProviderUnavailable
from adapters.email.smtp import SmtpProvider
from config.deliverability import DkimKey
from offload.client import submit_job
from resilience.dependencies import Dependencies
from tests.support.dkim_keys import dkimpy_verify, rsa_key, write_key
from tests.support.email import MAIL_FROM, outgoing
from tests.support.observe import query, wait_for, wait_for_job
from tests.support.postfix import BUSY, GONE, Submission
from tests.support.relays import wait_relayed
from tests.support.tls import server_tls

pytestmark = pytest.mark.integration

def test_a_job_through_postfix_is_chunked_signed_and_each_reply_is_the_learners_own(
    settings_factory, topics_for, processes, job_factory, mail_sink, relay_factory, tmp_path
):
    relay = relay_factory(mail_sink)
    key_file = write_key(tmp_path / "dkim-7.pem", rsa_key())
    settings = settings_factory(smtp_port=relay.port, job_batch_size=50, max_attempts=3, dkim_dns_check=False,
                                dkim_keys={"7": DkimKey(domain="school7.example.org", selector="s2026",
                                                        key_file=key_file)})
    topics_for(settings)
    job = job_factory("through-postfix", 300)
    job["recipients"][10]["email"], job["recipients"][200]["email"] = GONE, BUSY
    worker = processes("worker", settings)
    processes("projector", settings)
    asyncio.run(submit_job(settings, job))

    done = wait_for_job(settings, "through-postfix")
    assert (done["succeeded"], done["failed"]) == (298, 2)
    rows = {r["email"]: r for r in query(settings, "SELECT * FROM job_recipients WHERE job_id = %s",
                                          ("through-postfix",))}
    gone, busy = rows.pop(GONE), rows.pop(BUSY)
    assert gone["status"] == "failed" and gone["retryable"] is False and gone["attempts"] == 1
    assert gone["error_message"].startswith("550 5.1.1 <gone@example.org>: Recipient address rejected")
    assert busy["status"] == "failed" and busy["retryable"] is True and busy["attempts"] == 3
    assert busy["error_message"].startswith("450 4.2.0 <busy@example.org>: Recipient address rejected")

    # Each learner's recorded queue id is the one Postfix gave that learner's message: no reply in a window of
    # pipelined transactions was taken for another's.
    relayed = wait_relayed(mail_sink, 298)
    assert set(relayed) == set(rows) and all(len(got) == 1 for got in relayed.values())
    wait_for(lambda: len(relay.message_ids()) >= 298, what="Postfix's cleanup log lines")
    queued = relay.message_ids()
    name = "s2026._domainkey.school7.example.org"
    for address, row in rows.items():
        (received,) = relayed[address]
        assert row["status"] == "sent" and row["provider"] == "smtp"
        assert queued[row["provider_message_id"]] == received.message_id, address
        assert received.raw.startswith(b"Received: from ") and f"by {relay.hostname} (Postfix)".encode() in received.raw
        assert dkimpy_verify(received.raw, name=name, key=rsa_key()), address  # Postfix's Received: is not signed

    # The worker's sessions sent every transaction with BDAT, none with DATA, and said QUIT when it stopped.
    worker.stop()
    wait_for(lambda: relay.open_sessions() == 0, what="the worker's sessions ended")
    sessions = [s for s in relay.sessions() if "mail" in s]  # not the fixture's probe, which only read the greeting
    assert sessions and all("bdat" in s and "data" not in s and s["quit"] == "1" for s in sessions), sessions
    transactions = sum(int(s["bdat"].split("/")[-1]) for s in sessions)
    assert transactions == 298 + 1 + 3  # the refused learner's once, the deferred one's three times
    assert "improper command pipelining" not in relay.log()


def test_a_job_most_of_whose_learners_the_relay_refuses_outlasts_its_error_limits_and_each_learner_ends_once(
    settings_factory, topics_for, processes, job_factory, mail_sink, relay_factory
):
    # Postfix holds off a client that makes errors without delivering mail: past smtpd_hard_error_limit errors since
    # its last delivered message it answers 421 and closes the session, the rest of a window unread. That close is
    # a TCP reset, which may discard replies still on their way to the worker: a refused message whose refusal was
    # lost so is tried again (so more than one attempt), and an accepted one whose 250 was lost would be sent twice.
    # A refused BDAT transaction is two errors (RCPT, BDAT), and the worker writes nothing more after a refusal
    # until its window is answered: after a delivered message at most window - 1 = 3 refused ones are in flight,
    # 6 errors. With a limit of 8 (Postfix's default is 20) the 421 never follows a 250 in the same window.
    refused = {f"learner{i}@example.org" for i in range(1, 81) if i % 10}
    relay = relay_factory(mail_sink, access={address: "550 5.1.1 No such user here" for address in refused},
                          smtpd_hard_error_limit="8", smtpd_soft_error_limit="4", smtpd_error_sleep_time="0")
    settings = settings_factory(smtp_port=relay.port, smtp_connections=2, job_batch_size=40, max_attempts=10)
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("refused-mostly", 80)))

    done = wait_for_job(settings, "refused-mostly")
    assert (done["succeeded"], done["failed"]) == (8, 72)
    assert "too many errors after" in relay.log()  # the limit was reached: sessions closed under open windows
    rows = {r["email"]: r for r in query(settings, "SELECT * FROM job_recipients WHERE job_id = %s",
                                          ("refused-mostly",))}
    for address in refused:  # each refused learner ends with its own refusal, whatever replies the resets took
        assert (rows[address]["status"], rows[address]["retryable"]) == ("failed", False)
        assert rows[address]["error_message"].startswith(f"550 5.1.1 <{address}>: Recipient address rejected")
    wait_relayed(mail_sink, 8)
    assert mail_sink.recipient_counts() == {f"learner{i}@example.org": 1 for i in range(10, 81, 10)}


def test_a_relay_that_limits_its_rate_slows_the_job_down_without_spending_attempts(
    settings_factory, topics_for, processes, job_factory, mail_sink, relay_factory
):
    # Postfix's anvil: at most 15 messages per client in 3 s ("450 4.7.1 Error: too much mail from …" past it).
    # Clients in mynetworks are exempt by default; a site that limits its Moodle server lists none.
    relay = relay_factory(mail_sink, smtpd_client_message_rate_limit="15", anvil_rate_time_unit="3s",
                          smtpd_client_event_limit_exceptions="")
    settings = settings_factory(smtp_port=relay.port, job_batch_size=20, max_attempts=2)
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("rate-limited", 60)))

    done = wait_for_job(settings, "rate-limited", timeout=120)
    assert (done["succeeded"], done["failed"]) == (60, 0)
    assert "Message delivery request rate limit exceeded" in relay.log()  # the limit was reached
    attempts = [r["attempts"] for r in query(settings, "SELECT attempts FROM job_recipients WHERE job_id = %s",
                                             ("rate-limited",))]
    assert attempts == [1] * 60  # waiting for the relay's rate is not a failed attempt
    wait_relayed(mail_sink, 60)
    assert mail_sink.recipient_counts() == {f"learner{i}@example.org": 1 for i in range(1, 61)}


async def test_sessions_beyond_the_relays_limit_per_client_are_not_the_relay_lost_and_the_others_send(
    mail_sink, relay_factory, caplog
):
    # Postfix takes at most 2 sessions from one client at a time (smtpd_client_connection_count_limit; mynetworks
    # is exempt by default), as several workers' pools may together exceed a relay's limit.
    relay = relay_factory(mail_sink, smtpd_client_connection_count_limit="2", smtpd_client_event_limit_exceptions="")
    deps = Dependencies()
    provider = SmtpProvider("127.0.0.1", relay.port, mail_from=MAIL_FROM, connections=4, timeout=10,
                            dependencies=deps)
    try:
        await provider.start()
        results = await provider.send_batch([outgoing(i) for i in range(40)])
        results += await provider.send_batch([outgoing(i) for i in range(40, 60)])
    finally:
        await provider.stop()
    assert [r.outcome for r in results] == [Outcome.SENT] * 60
    assert "Connection concurrency limit exceeded" in relay.log()  # the relay did refuse sessions
    state = deps.snapshot()["smtp-relay"]
    assert (state.up, state.losses) == (True, 0)  # it was there all along: health never said otherwise
    said = [r.getMessage() for r in caplog.records if "refused a session beyond those the worker holds" in r.getMessage()]
    assert len(said) == 1 and "421 4.7.0" in said[0], said
    assert set(await asyncio.to_thread(wait_relayed, mail_sink, 60)) == {f"learner{i}@example.org" for i in range(60)}

    # Other clients hold both sessions the relay allows: now it is lost to this one, and why is said.
    with smtplib.SMTP("127.0.0.1", relay.port) as one, smtplib.SMTP("127.0.0.1", relay.port) as other:
        assert one.noop()[0] == other.noop()[0] == 250
        shut_out = SmtpProvider("127.0.0.1", relay.port, mail_from=MAIL_FROM, connections=2, timeout=10,
                                dependencies=deps)
        with pytest.raises(ProviderUnavailable, match="421 4.7.0 .* too many connections from 127.0.0.1"):
            await shut_out.send_batch([outgoing(60)])
        await shut_out.stop()
    assert deps.down()["smtp-relay"].startswith(f"127.0.0.1:{relay.port}: 421 4.7.0 ")


async def test_sessions_postfix_closed_while_idle_are_opened_again_and_nobody_is_sent_twice(
    mail_sink, relay_factory
):
    relay = relay_factory(mail_sink, smtpd_timeout="1s")
    provider = SmtpProvider("127.0.0.1", relay.port, mail_from=MAIL_FROM, connections=2, window=4, timeout=10)
    await provider.start()
    try:
        first = await provider.send_batch([outgoing(i) for i in range(10)])
        # Postfix drops a session that says nothing for smtpd_timeout; wait until it dropped every one.
        await asyncio.to_thread(wait_for, lambda: "timeout after" in relay.log() and relay.open_sessions() == 0,
                                what="Postfix closing the idle sessions")
        second = await provider.send_batch([outgoing(i) for i in range(10, 30)])
    finally:
        await provider.stop()
    assert [r.outcome for r in first + second] == [Outcome.SENT] * 30, [r.error for r in first + second]
    relayed = await asyncio.to_thread(wait_relayed, mail_sink, 30)
    assert Counter({address: len(got) for address, got in relayed.items()}) == Counter(
        {f"learner{i}@example.org": 1 for i in range(30)})


def test_a_job_through_a_relay_that_asks_for_starttls_and_auth_is_sent_encrypted_and_authenticated(
    settings_factory, topics_for, processes, job_factory, mail_sink, relay_factory, tmp_path
):
    # The relay's certificate is from the site's own CA, which the worker is given (OFFLOAD_SMTP_CA_FILE).
    tls, password = server_tls(tmp_path / "tls"), secrets.token_urlsafe(16)
    relay = relay_factory(mail_sink, Submission(tls, {"moodle": password}))
    settings = settings_factory(smtp_port=relay.port, smtp_starttls=True, smtp_username="moodle",
                                smtp_password=password, smtp_ca_file=tls.ca_file)
    topics_for(settings)
    worker = processes("worker", settings)
    processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("submission", 40)))

    done = wait_for_job(settings, "submission")
    assert (done["succeeded"], done["failed"]) == (40, 0)
    assert set(wait_relayed(mail_sink, 40)) == {f"learner{i}@example.org" for i in range(1, 41)}
    worker.stop()
    wait_for(lambda: relay.open_sessions() == 0, what="the worker's sessions ended")
    log = relay.log()
    sessions = [s for s in relay.sessions() if "mail" in s]
    # Every session the worker opened was upgraded before it authenticated; none was refused.
    assert sessions and all(s["starttls"] == "1" and s["auth"] == "1" and "/" not in s["mail"] for s in sessions)
    assert log.count("TLS connection established from localhost") == sum("starttls" in s for s in relay.sessions())
    # Postfix logs who sent each message it took: all 40, by the authenticated user.
    assert re.findall(r"client=localhost\[127\.0\.0\.1\](.*)", log) == [", sasl_method=PLAIN, sasl_username=moodle"] * 40
    assert password not in worker.log_text() and password not in log


async def test_a_relay_certificate_no_trusted_ca_issued_or_a_wrong_password_is_the_relay_unavailable_and_why(
    mail_sink, relay_factory, tmp_path
):
    tls, password = server_tls(tmp_path / "tls"), secrets.token_urlsafe(16)
    relay = relay_factory(mail_sink, Submission(tls, {"moodle": password}))

    async def attempt(**options: str) -> str:
        deps = Dependencies()
        provider = SmtpProvider("127.0.0.1", relay.port, mail_from=MAIL_FROM, connections=1, timeout=10,
                                starttls=True, username="moodle", dependencies=deps, **options)
        try:
            with pytest.raises(ProviderUnavailable) as refused:
                await provider.send_batch([outgoing(0)])
        finally:
            await provider.stop()
        assert deps.down()["smtp-relay"].startswith(f"127.0.0.1:{relay.port}: ")  # what health and /metrics show
        return str(refused.value)

    # The system's CAs did not issue it: the session is not used, not even for AUTH.
    untrusted = await attempt(password=password)
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted
    wrong = secrets.token_urlsafe(16)
    refused = await attempt(password=wrong, ca_file=str(tls.ca_file))
    assert "authentication failed (535)" in refused and wrong not in refused
    trusting = SmtpProvider("127.0.0.1", relay.port, mail_from=MAIL_FROM, connections=1, timeout=10, starttls=True,
                            username="moodle", password=password, ca_file=str(tls.ca_file))
    try:
        assert [r.outcome for r in await trusting.send_batch([outgoing(1)])] == [Outcome.SENT]
    finally:
        await trusting.stop()
    assert set(await asyncio.to_thread(wait_relayed, mail_sink, 1)) == {"learner1@example.org"}
    assert "authentication failed" in relay.log() and wrong not in relay.log()


async def test_on_implicit_tls_a_provider_given_the_sites_ca_authenticates_and_sends(mail_sink, relay_factory,
                                                                                    tmp_path):
    tls, password = server_tls(tmp_path / "tls"), secrets.token_urlsafe(16)
    relay = relay_factory(mail_sink, Submission(tls, {"moodle": password}), smtpd_tls_wrappermode="yes")
    provider = SmtpProvider("127.0.0.1", relay.port, mail_from=MAIL_FROM, connections=1, timeout=10, use_tls=True,
                            username="moodle", password=password, ca_file=str(tls.ca_file))
    try:
        results = await provider.send_batch([outgoing(i) for i in range(3)])
    finally:
        await provider.stop()
    assert [r.outcome for r in results] == [Outcome.SENT] * 3, [r.error for r in results]
    assert set(await asyncio.to_thread(wait_relayed, mail_sink, 3)) == {f"learner{i}@example.org" for i in range(3)}
    log = relay.log()
    assert log.count("sasl_username=moodle") == 3 and "TLS connection established from localhost" in log


async def test_with_chunking_off_a_window_goes_as_pipelined_data_and_each_reply_is_its_own(mail_sink, relay_factory):
    relay = relay_factory(mail_sink)
    provider = SmtpProvider("127.0.0.1", relay.port, mail_from=MAIL_FROM, connections=2, timeout=10, chunking=False)
    messages = [outgoing(i) for i in range(20)] + [outgoing(20, address=GONE), outgoing(21, address=BUSY)]
    try:
        results = await provider.send_batch(messages + [outgoing(i) for i in range(22, 40)])
    finally:
        await provider.stop()
    by_key = {r.key: r for r in results}
    assert by_key["20"].outcome is Outcome.FAILED and by_key["20"].error.startswith("550 5.1.1 <gone@example.org>")
    assert by_key["21"].outcome is Outcome.RETRY and by_key["21"].error.startswith("450 4.2.0 <busy@example.org>")
    assert [by_key[str(i)].outcome for i in (*range(20), *range(22, 40))] == [Outcome.SENT] * 38
    relayed = await asyncio.to_thread(wait_relayed, mail_sink, 38)
    await asyncio.to_thread(wait_for, lambda: len(relay.message_ids()) >= 38, what="Postfix's cleanup log lines")
    queued = relay.message_ids()
    for i in (*range(20), *range(22, 40)):
        (received,) = relayed[f"learner{i}@example.org"]
        assert queued[by_key[str(i)].provider_message_id] == received.message_id
    await asyncio.to_thread(wait_for, lambda: relay.open_sessions() == 0, what="the sessions ended")
    sessions = [s for s in relay.sessions() if "mail" in s]
    assert sessions and all("data" in s and "bdat" not in s for s in sessions), sessions
