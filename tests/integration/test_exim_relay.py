"""The local route through a real Exim (tests/support/exim.py), the relay Debian installs by default: it takes the
worker's mail (its "OK id=…" is each learner's provider message id); a relay that will not relay for the worker's
host, or refuses its sender, is the relay unavailable until mended; and its bounces, piped to the API as
docs/suppression.md shows, suppress the learner."""

from __future__ import annotations

import asyncio
import re
import secrets

import pytest

from adapters.email.base import Outcome, ProviderUnavailable
from offload.client import submit_job
from tests.support.email import MAIL_DOMAIN, MAIL_FROM, outgoing
from tests.support.observe import wait_for_job
from tests.support.relays import until_mended, wait_relayed, watched_provider
from tests.support.tls import server_tls

pytestmark = pytest.mark.integration

UNTRUSTED = "10.255.255.0/24"  # relay_from_hosts without loopback: not the worker's host
DENIED = "refuses this worker's mail: 550 relay not permitted"


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
async def test_a_relay_that_does_not_relay_for_the_workers_host_is_unavailable_until_mended_then_each_is_sent_once(
    mail_sink, exim_factory, chunking: bool
):
    relay = exim_factory(mail_sink, relay_from_hosts=UNTRUSTED)
    provider, deps = watched_provider(relay.port, chunking=chunking)
    messages = [outgoing(i) for i in range(12)]
    try:
        with pytest.raises(ProviderUnavailable, match=re.escape(f"smtp 127.0.0.1:{relay.port}: {DENIED}")):
            await provider.send_batch(messages)
        assert deps.down()["smtp-relay"] == f"127.0.0.1:{relay.port}: {DENIED}"
        with pytest.raises(ConnectionError, match="relay not permitted"):
            await provider.recheck()
        assert relay.message_ids() == {}
        # Each learner asked for once, then 3 again by a new session, then one by the recheck.
        assert relay.rejected().count("relay not permitted") == 12 + 3 + 1

        relay.change(relay_from_hosts="127.0.0.1")
        await until_mended(provider)
        results = await provider.send_batch(messages)
    finally:
        await provider.stop()
    assert [r.outcome for r in results] == [Outcome.SENT] * 12, [r.error for r in results]
    # Exim's "250 OK id=…" names each message as its log does.
    taken = relay.message_ids()
    assert {r.provider_message_id: m.message_id for r, m in zip(results, messages, strict=True)} == taken
    state = deps.snapshot()["smtp-relay"]
    assert (state.up, state.losses, state.reconnects) == (True, 1, 1)
    got = await asyncio.to_thread(wait_relayed, mail_sink, 12)
    assert {address: len(each) for address, each in got.items()} == {f"learner{i}@example.org": 1 for i in range(12)}


async def test_a_relay_whose_sender_verification_fails_for_the_workers_sender_is_unavailable(mail_sink, exim_factory):
    relay = exim_factory(mail_sink, unroutable_sender=MAIL_DOMAIN)
    provider, deps = watched_provider(relay.port)
    refused = f"refuses this worker's mail: 550 Verification failed for <{MAIL_FROM}> Unrouteable address Sender " \
              "verify failed"
    try:
        with pytest.raises(ProviderUnavailable, match=re.escape(refused)):
            await provider.send_batch([outgoing(i) for i in range(40)])
    finally:
        await provider.stop()
    assert deps.down()["smtp-relay"] == f"127.0.0.1:{relay.port}: {refused}"
    # Each session gave up at its first refusal, once its window was answered, instead of 40 learners refused.
    assert relay.rejected().count("Sender verify failed") <= 2 * 4
    assert relay.message_ids() == {}


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
async def test_learners_it_refuses_fail_on_their_own_and_each_learner_behind_them_gets_one_message(
    mail_sink, exim_factory, chunking: bool
):
    # Exim keeps a transaction whose recipients it all refused open after refusing its chunk: a MAIL already on the
    # wire behind it is answered "503 sender already given", and that message's RCPT and chunk go into the open
    # transaction. Taken for a refusal and sent again, each learner behind a refused one got the message twice.
    gone = tuple(f"learner{i}@example.org" for i in range(1, 60, 4))
    relay = exim_factory(mail_sink, refused=gone)
    provider, deps = watched_provider(relay.port, chunking=chunking)
    messages = [outgoing(i) for i in range(60)]
    try:
        results = await provider.send_batch(messages)
    finally:
        await provider.stop()
    refused = [m.to_address in gone for m in messages]
    assert [r.outcome for r in results] == [Outcome.FAILED if no else Outcome.SENT for no in refused], \
        [r.error for r in results]
    assert {r.error for r, no in zip(results, refused, strict=True) if no} == {"550 5.1.1 No such user here"}
    taken = relay.message_ids()
    assert len(taken) == 45 and set(taken.values()) == {m.message_id for m, no in zip(messages, refused,
                                                                                      strict=True) if not no}
    got = await asyncio.to_thread(wait_relayed, mail_sink, 45)
    assert {address: len(each) for address, each in got.items()} == \
        {m.to_address: 1 for m, no in zip(messages, refused, strict=True) if not no}
    state = deps.snapshot()["smtp-relay"]
    assert (state.up, state.losses) == (True, 0)


def test_a_job_through_an_exim_that_asks_for_starttls_and_auth_is_sent_encrypted_and_authenticated_once_each(
    settings_factory, topics_for, processes, job_factory, mail_sink, exim_factory, tmp_path
):
    """Exim as a submission relay: STARTTLS with a certificate from the site's own CA, AUTH PLAIN offered only once
    encrypted, relaying only for whoever logged in (not for the worker's address)."""
    tls, password = server_tls(tmp_path / "tls"), secrets.token_urlsafe(16)
    relay = exim_factory(mail_sink, relay_from_hosts="", login=(tls, "moodle", password))
    settings = settings_factory(smtp_port=relay.port, smtp_starttls=True, smtp_username="moodle",
                                smtp_password=password, smtp_ca_file=tls.ca_file)
    topics_for(settings)
    worker = processes("worker", settings)
    processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("exim-submission", 30)))

    done = wait_for_job(settings, "exim-submission")
    assert (done["succeeded"], done["failed"]) == (30, 0)
    got = wait_relayed(mail_sink, 30)
    assert {address: len(each) for address, each in got.items()} == {f"learner{i}@example.org": 1 for i in range(1, 31)}
    # Exim logs each message it took with how: over TLS (X=), logged in as moodle (A=), ESMTP with both (esmtpsa).
    arrivals = [line for line in relay.log().splitlines() if " <= " in line]
    assert len(arrivals) == 30 and all(" P=esmtpsa " in a and " X=TLS" in a and " A=plain_server:moodle " in a
                                       for a in arrivals), arrivals[:2]
    assert password not in worker.log_text() and password not in relay.log()


async def test_an_exim_whose_certificate_no_trusted_ca_issued_or_that_refuses_the_password_is_unavailable(
    mail_sink, exim_factory, tmp_path
):
    tls, password = server_tls(tmp_path / "tls"), secrets.token_urlsafe(16)
    relay = exim_factory(mail_sink, relay_from_hosts="", login=(tls, "moodle", password))

    async def refused(**options: str) -> str:
        provider, deps = watched_provider(relay.port, connections=1, starttls=True, username="moodle", **options)
        try:
            with pytest.raises(ProviderUnavailable) as why:
                await provider.send_batch([outgoing(0)])
        finally:
            await provider.stop()
        assert deps.down()["smtp-relay"].startswith(f"127.0.0.1:{relay.port}: ")  # what health shows
        return str(why.value)

    assert "CERTIFICATE_VERIFY_FAILED" in await refused(password=password)  # not used, not even for AUTH
    wrong = secrets.token_urlsafe(16)
    said = await refused(password=wrong, ca_file=str(tls.ca_file))
    assert "authentication failed (535)" in said and wrong not in said
    assert "535 Incorrect authentication data" in relay.log() and wrong not in relay.log()
    assert relay.message_ids() == {}


async def test_sessions_beyond_exims_limit_per_host_are_not_the_relay_lost_and_the_others_send_each_once(
    mail_sink, exim_factory, caplog
):
    """Exim's ``smtp_accept_max_per_host``: the worker's pool (here 4 sessions) asks for more than the relay takes
    from its host (2), as several workers on one host may. The sessions it refuses are not the relay lost."""
    relay = exim_factory(mail_sink, max_per_host=2)
    provider, deps = watched_provider(relay.port, connections=4)
    try:
        results = await provider.send_batch([outgoing(i) for i in range(40)])
        results += await provider.send_batch([outgoing(i) for i in range(40, 60)])
    finally:
        await provider.stop()
    assert [r.outcome for r in results] == [Outcome.SENT] * 60, [r.error for r in results if r.error]
    assert "Connection from [127.0.0.1] refused: too many connections from that IP address" in relay.log()
    state = deps.snapshot()["smtp-relay"]
    assert (state.up, state.losses) == (True, 0)  # there all along: health never said otherwise
    said = [r.getMessage() for r in caplog.records if "refused a session beyond those the worker holds" in r.getMessage()]
    assert len(said) == 1 and "421" in said[0], said
    got = await asyncio.to_thread(wait_relayed, mail_sink, 60)
    assert {address: len(each) for address, each in got.items()} == {f"learner{i}@example.org": 1 for i in range(60)}
