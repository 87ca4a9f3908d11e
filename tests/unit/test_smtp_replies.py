"""How a relay's temporary refusal is read: the relay asking to slow down (no attempt spent, the sends wait) or a
transient failure of this message (an attempt spent). Reply texts as Postfix and hosted relays send them."""

from __future__ import annotations

import pytest

from adapters.email.base import Outcome
from adapters.email.smtp import classify_reply


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
