"""A real Postfix (tests/support/postfix.py) that answers the worker but will not take its mail as it is set up: it
does not relay for the worker's host, refuses its sender or its host, or wants STARTTLS first. That is the relay
unavailable, with the relay's own words as the reason, and no learner's refusal: their sends wait for it without
spending attempts, and once the relay is mended each learner is sent once. A relay that relays for some domains
only refuses the others as their own outcome."""

from __future__ import annotations

import asyncio
import re
import secrets
import smtplib

import pytest

from adapters.email.base import Outcome, ProviderUnavailable
from adapters.email.smtp import SmtpProvider
from offload.client import submit_job
from tests.support.email import MAIL_FROM, outgoing
from tests.support.observe import query, wait_for, wait_for_job
from tests.support.postfix import PostfixRelay, Submission
from tests.support.relays import until_mended, wait_relayed, watched_provider
from tests.support.tls import server_tls

pytestmark = pytest.mark.integration

UNTRUSTED = "10.255.255.0/24"  # mynetworks without loopback: the worker's host is not one the relay relays for
DENIED = "refuses this worker's mail: 554 5.7.1 <…>: Relay access denied"


def _ended_politely(relay: PostfixRelay) -> None:
    """Every session the worker opened ended with QUIT, the refused ones too: the relay's log says who hung up."""
    wait_for(lambda: relay.open_sessions() == 0, what="the worker's sessions ended")
    sessions = [s for s in relay.sessions() if "mail" in s]
    assert sessions and all(s["quit"] == "1" for s in sessions), sessions


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
async def test_a_relay_that_does_not_relay_for_the_workers_host_is_unavailable_until_mended_then_each_is_sent_once(
    mail_sink, relay_factory, chunking: bool
):
    relay = relay_factory(mail_sink, mynetworks=UNTRUSTED)
    provider, deps = watched_provider(relay.port, chunking=chunking)
    messages = [outgoing(i) for i in range(12)]
    try:
        await provider.start()  # the relay greets the worker: it is there
        assert deps.snapshot()["smtp-relay"].up
        with pytest.raises(ProviderUnavailable, match=re.escape(f"smtp 127.0.0.1:{relay.port}: {DENIED}")):
            await provider.send_batch(messages)
        # What health and /metrics show: the relay's words, naming no learner.
        assert deps.down()["smtp-relay"] == f"127.0.0.1:{relay.port}: {DENIED}"
        with pytest.raises(ConnectionError, match="Relay access denied"):
            await provider.recheck()  # asks MAIL and RCPT for a refused learner, then RSET: nothing is sent
        assert relay.message_ids() == {}
        # Each learner was asked for once (the batch is judged whole), then a new session asked for 3 of them again
        # (no address the relay took mail to is known yet), then the recheck for one.
        assert relay.log().count("Relay access denied") == 12 + 3 + 1

        # The site's admin trusts the worker's host, and reloads; the worker's sessions opened before keep the old
        # terms, so it opens new ones.
        relay.change(mynetworks="127.0.0.0/8")
        await until_mended(provider)
        results = await provider.send_batch(messages)
    finally:
        await provider.stop()
    assert [r.outcome for r in results] == [Outcome.SENT] * 12, [r.error for r in results]
    state = deps.snapshot()["smtp-relay"]
    assert (state.up, state.losses, state.reconnects) == (True, 1, 1)
    got = await asyncio.to_thread(wait_relayed, mail_sink, 12)
    assert {address: len(each) for address, each in got.items()} == {f"learner{i}@example.org": 1 for i in range(12)}
    await asyncio.to_thread(_ended_politely, relay)


async def test_learners_denied_on_a_session_opened_before_the_relay_was_mended_are_sent_on_new_ones_not_failed(
    mail_sink, relay_factory
):
    # The relay takes one session from the worker's host (it is not in mynetworks, so the limit applies to it):
    # the pool's first session opens on the old terms, the other is refused at start.
    relay = relay_factory(mail_sink, mynetworks=UNTRUSTED, smtpd_client_connection_count_limit="1",
                          smtpd_client_event_limit_exceptions="")
    provider = SmtpProvider("127.0.0.1", relay.port, mail_from=MAIL_FROM, connections=2, timeout=10)
    try:
        await provider.start()
        relay.change(mynetworks="127.0.0.0/8", smtpd_client_event_limit_exceptions="$mynetworks")
        # Until a new session gets the new terms (Postfix's reload reaches new sessions only): the worker's other
        # session opens on them, while its first keeps the old ones.
        await asyncio.to_thread(wait_for, lambda: _takes_from_new_sessions(relay),
                                what="the reloaded relay relaying for new sessions")
        try:
            first = await provider.send_batch([outgoing(i) for i in range(12)])
        except ProviderUnavailable as exc:  # the old session was quicker than the new one to open: it had them all
            assert "sessions older than the relay's terms for new ones" in str(exc)
            left = list(range(12))
        else:
            left = [i for i, r in enumerate(first) if r.outcome is not Outcome.SENT]
            # Those the old session was denied are back, unsent, with no attempt spent; not failed as their own.
            assert left and all(first[i].outcome is Outcome.UNREACHED for i in left), [r.error for r in first]
        second = await provider.send_batch([outgoing(i) for i in left])
    finally:
        await provider.stop()
    assert [r.outcome for r in second] == [Outcome.SENT] * len(left), [r.error for r in second]
    got = await asyncio.to_thread(wait_relayed, mail_sink, 12)
    assert {address: len(each) for address, each in got.items()} == {f"learner{i}@example.org": 1 for i in range(12)}


def _takes_from_new_sessions(relay: PostfixRelay) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as probe:
            probe.ehlo("probe")
            probe.mail(MAIL_FROM)
            accepted = probe.rcpt("learner0@example.org")[0] == 250
            probe.rset()
            return accepted
    except smtplib.SMTPException:  # the old terms: its one session per client is the worker's
        return False


async def test_a_relay_that_relays_for_some_domains_only_refuses_the_others_as_their_own(mail_sink, relay_factory):
    relay = relay_factory(mail_sink, mynetworks=UNTRUSTED, relay_domains="school.example.org",
                          relay_transport=f"relay:[127.0.0.1]:{mail_sink.port}")
    provider, deps = watched_provider(relay.port)
    # The first learners are the ones it does not relay for: each session meets a refusal before any is taken.
    addresses = [f"learner{i}@example.org" for i in range(4)] + [f"learner{i}@school.example.org" for i in range(4)]
    try:
        results = await provider.send_batch([outgoing(i, address=a) for i, a in enumerate(addresses)])
    finally:
        await provider.stop()
    assert [r.outcome for r in results] == [Outcome.FAILED] * 4 + [Outcome.SENT] * 4, [r.error for r in results]
    for address, result in zip(addresses, results[:4], strict=False):
        assert result.error == f"554 5.7.1 <{address}>: Relay access denied"
    state = deps.snapshot()["smtp-relay"]
    assert (state.up, state.losses) == (True, 0)
    assert set(await asyncio.to_thread(wait_relayed, mail_sink, 4)) == set(addresses[4:])


@pytest.mark.parametrize(("settings", "refused"), [
    ({"smtpd_sender_restrictions": f"check_sender_access inline:{{{MAIL_FROM}=REJECT}}"},
     f"554 5.7.1 <{MAIL_FROM}>: Sender address rejected: Access denied"),  # said to RCPT (smtpd_delay_reject)
    ({"smtpd_sender_restrictions": f"check_sender_access inline:{{{MAIL_FROM}=REJECT}}", "smtpd_delay_reject": "no"},
     f"554 5.7.1 <{MAIL_FROM}>: Sender address rejected: Access denied"),  # said to MAIL
    ({"smtpd_client_restrictions": "check_client_access inline:{127.0.0.1=REJECT}"},
     "554 5.7.1 <localhost[127.0.0.1]>: Client host rejected: Access denied"),
], ids=["sender-at-rcpt", "sender-at-mail", "client-host"])
async def test_a_relay_that_refuses_the_workers_sender_or_host_is_unavailable_at_the_first_refusal_of_each_session(
    mail_sink, relay_factory, settings: dict[str, str], refused: str
):
    relay = relay_factory(mail_sink, **settings)
    provider, deps = watched_provider(relay.port)
    try:
        with pytest.raises(ProviderUnavailable, match=re.escape(f"refuses this worker's mail: {refused}")):
            await provider.send_batch([outgoing(i) for i in range(40)])
    finally:
        await provider.stop()
    assert deps.down()["smtp-relay"] == f"127.0.0.1:{relay.port}: refuses this worker's mail: {refused}"
    # Each session gave up at its first refusal, once its window (4 messages written before the first is answered)
    # was answered, instead of having all 40 learners refused.
    assert relay.log().count(refused.split(": ", 1)[1]) <= 2 * 4
    assert relay.message_ids() == {}
    await asyncio.to_thread(_ended_politely, relay)


async def test_a_relay_that_wants_starttls_first_is_unavailable_and_says_so(mail_sink, relay_factory, tmp_path):
    relay = relay_factory(mail_sink, Submission(server_tls(tmp_path / "tls"), {"moodle": secrets.token_urlsafe(16)}),
                          smtpd_tls_security_level="encrypt")
    provider, deps = watched_provider(relay.port, connections=1)  # OFFLOAD_SMTP_STARTTLS left off
    try:
        with pytest.raises(ProviderUnavailable, match="530 5.7.0 Must issue a STARTTLS command first"):
            await provider.send_batch([outgoing(i) for i in range(5)])
    finally:
        await provider.stop()
    assert "530 5.7.0 Must issue a STARTTLS command first" in deps.down()["smtp-relay"]


def test_a_job_through_a_relay_that_does_not_relay_for_the_worker_waits_spending_no_attempt_and_is_sent_once_mended(
    settings_factory, topics_for, processes, job_factory, mail_sink, relay_factory
):
    relay = relay_factory(mail_sink, mynetworks=UNTRUSTED)
    settings = settings_factory(smtp_port=relay.port, max_attempts=2, relay_outage_max_seconds=3600)
    topics_for(settings)
    worker = processes("worker", settings)
    processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("refused-worker", 30)))

    # Before: each learner failed at once, permanently, with the relay's refusal.
    worker.wait_for_log("wait for it without spending attempts", timeout=90)
    log = worker.log_text()
    assert f"smtp-relay lost: 127.0.0.1:{relay.port}: {DENIED}" in log
    assert not re.search(r"learner\d+@example\.org", log)
    assert query(settings, "SELECT count(*) AS n FROM job_recipients WHERE job_id = %s AND status <> 'pending'",
                 ("refused-worker",))[0]["n"] == 0

    relay.change(mynetworks="127.0.0.0/8")
    done = wait_for_job(settings, "refused-worker", timeout=120)
    assert (done["succeeded"], done["failed"]) == (30, 0)
    attempts = [r["attempts"] for r in query(settings, "SELECT attempts FROM job_recipients WHERE job_id = %s",
                                             ("refused-worker",))]
    assert attempts == [1] * 30  # waiting for the relay spent nobody's attempts
    got = wait_relayed(mail_sink, 30)
    assert {address: len(each) for address, each in got.items()} == {f"learner{i}@example.org": 1 for i in range(1, 31)}
