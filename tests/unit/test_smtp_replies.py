"""How a relay's refusal is read: the relay asking to slow down (no attempt spent, the sends wait), a transient or
permanent failure of this message, or the relay refusing this worker (the relay unavailable: no learner's outcome).
Reply texts as Postfix, Exim, Sendmail, Exchange and hosted relays send them."""

from __future__ import annotations

import pytest

from adapters.email.base import Outcome
from adapters.email.smtp_replies import classify_reply, denies_relaying, refuses_worker, without_addresses


@pytest.mark.parametrize(("code", "text"), [
    (450, "4.7.1 Error: too much mail from 127.0.0.1"),  # Postfix smtpd_client_message_rate_limit
    (450, "4.7.1 Error: too many recipients from 127.0.0.1"),  # Postfix smtpd_client_recipient_rate_limit
    (421, "4.7.0 relay.example.org Error: too many connections from 127.0.0.1"),
    (421, "4.7.0 relay.example.org Error: too many errors"),  # closing: what was not answered is sent again
    (451, "4.7.500 Server busy. Please try again later from [192.0.2.1]"),
    (450, "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages"),
    (452, "4.5.3 Error: too many recipients"),
])
def test_a_relay_asking_to_slow_down_is_throttling(code: int, text: str) -> None:
    assert classify_reply(code, text) is Outcome.THROTTLED


@pytest.mark.parametrize(("code", "text"), [
    (450, "4.2.0 <busy@example.org>: Recipient address rejected: Mailbox temporarily unavailable"),
    (450, "4.1.8 <noreply@moodle.example.org>: Sender address rejected: Domain not found"),
    (450, "4.7.1 <learner@example.org>: Recipient address rejected: Greylisted for 300 seconds"),
])
def test_a_transient_refusal_of_the_message_spends_an_attempt(code: int, text: str) -> None:
    assert classify_reply(code, text) is Outcome.RETRY


def test_a_permanent_refusal_is_a_failure() -> None:
    assert classify_reply(550, "5.1.1 <gone@example.org>: Recipient address rejected: No such user here") \
        is Outcome.FAILED


@pytest.mark.parametrize(("command", "code", "text"), [
    ("MAIL", 530, "5.7.0 Must issue a STARTTLS command first"),  # Postfix smtpd_tls_security_level = encrypt
    ("MAIL", 530, "5.7.57 Client not authenticated to send mail. Error: 535 5.7.139 Authentication unsuccessful"),
    ("RCPT", 530, "5.7.0 Authentication required"),
    ("MAIL", 553, "5.7.1 <noreply@moodle.example.org>: Sender address rejected: not owned by user moodle"),
    ("MAIL", 501, "5.1.7 Bad sender address syntax"),  # the sender is the worker's setting, not a learner's
    ("MAIL", 550, "5.7.1 Sender domain not allowed"),
    ("RCPT", 554, "5.7.1 <noreply@moodle.example.org>: Sender address rejected: Access denied"),  # delayed to RCPT
    ("RCPT", 450, "4.1.8 <noreply@moodle.example.org>: Sender address rejected: Domain not found"),
    ("RCPT", 554, "5.7.1 <localhost[127.0.0.1]>: Client host rejected: Access denied"),
    ("RCPT", 450, "4.7.1 Client host rejected: cannot find your hostname, [192.0.2.7]"),
    ("RCPT", 554, "5.7.1 Service unavailable; Client host [192.0.2.7] blocked using zen.spamhaus.org"),
    ("RCPT", 504, "5.5.2 <moodle>: Helo command rejected: need fully-qualified hostname"),
    ("RCPT", 550, "Verification failed for <noreply@moodle.example.org>\nUnrouteable address\nSender verify failed"),
    ("RCPT", 550, "rejected because 192.0.2.7 is in a black list at zen.spamhaus.org"),  # Exim's dnslists
])
def test_a_refusal_of_the_workers_host_sender_or_login_is_the_relay_refusing_the_worker(
    command: str, code: int, text: str
) -> None:
    assert refuses_worker(command, code, text)


@pytest.mark.parametrize(("command", "code", "text"), [
    ("RCPT", 550, "5.1.1 <gone@example.org>: Recipient address rejected: No such user here"),
    ("RCPT", 554, "5.7.1 <learner@example.org>: Recipient address rejected: Access denied"),
    ("RCPT", 450, "4.2.0 <busy@example.org>: Recipient address rejected: Mailbox temporarily unavailable"),
    ("MAIL", 552, "5.3.4 Message size exceeds fixed limit"),  # to MAIL FROM ... SIZE=n: this message's own
    ("MAIL", 452, "4.3.1 Insufficient system storage"),  # the relay's queue is full: throttling, as before
    ("MAIL", 421, "4.7.0 relay.example.org Error: too many errors"),
    ("DATA", 554, "5.7.1 Message rejected: spam content"),
    ("DATA", 552, "5.3.4 Message size exceeds fixed limit"),
])
def test_a_refusal_of_the_message_or_the_learner_is_not_the_relay_refusing_the_worker(
    command: str, code: int, text: str
) -> None:
    assert not refuses_worker(command, code, text)
    assert not denies_relaying(command, code, text)


@pytest.mark.parametrize(("code", "text"), [
    (554, "5.7.1 <learner@example.org>: Relay access denied"),  # Postfix reject_unauth_destination
    (454, "4.7.1 <learner@example.org>: Relay access denied"),  # Postfix defer_unauth_destination (Debian's default)
    (550, "relay not permitted"),  # Exim
    (550, "5.7.1 <learner@example.org>... Relaying denied. IP name lookup failed [192.0.2.7]"),  # Sendmail
    (550, "5.7.54 SMTP; Unable to relay recipient in non-accepted domain"),  # Exchange
    (550, "5.7.0 Mail relay denied [192.0.2.7]. Invalid credentials for relay for one of the domains in: "
          "moodle.example.org"),  # a hosted relay (Google Workspace's SMTP relay)
])
def test_a_relay_denied_to_this_client_is_recognised_at_rcpt(code: int, text: str) -> None:
    assert denies_relaying("RCPT", code, text)
    assert not refuses_worker("RCPT", code, text)  # the learner's own if the relay takes others of the batch


def test_a_refusal_as_health_shows_it_names_the_sender_but_no_learner() -> None:
    assert without_addresses("5.7.1 <Learner.7@Example.org>: Relay access denied", sender="noreply@moodle.example.org") \
        == "5.7.1 <…>: Relay access denied"
    assert without_addresses("5.7.1 <NoReply@moodle.example.org>: Sender address rejected: Access denied",
                             sender="noreply@moodle.example.org") \
        == "5.7.1 <NoReply@moodle.example.org>: Sender address rejected: Access denied"
    assert without_addresses("5.7.1 <localhost[127.0.0.1]>: Client host rejected", sender="noreply@moodle.example.org") \
        == "5.7.1 <localhost[127.0.0.1]>: Client host rejected"
