"""What MAIL/RCPT and DATA carry for a message: envelope addresses in ASCII, and the lean transaction's wire form
equal to aiosmtplib's own encoding."""

from __future__ import annotations

import pytest
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from adapters.email.smtp import _PLAIN_ADDRESS, envelope_address, wire_form
from tests.support.email import outgoing


def aiosmtplib_form(raw: bytes) -> bytes:
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(raw)) + b".\r\n"


@pytest.mark.parametrize("raw", [
    b"Subject: x\r\n\r\nbody\r\n",
    b"Subject: x\r\n\r\n.starts with a dot\r\n..two\r\nlast line without end",
    b".first line is a dot\r\n\r\n.\r\n",
    b"Subject: bare LF\n\nline\n.dot after LF\n",
    b"Subject: bare CR\r\rline\r\n",
    b"Subject: mixed\r\n\nline\r.x\r\n",
    b"",
])
def test_wire_form_matches_aiosmtplib(raw: bytes) -> None:
    assert wire_form(raw) == aiosmtplib_form(raw)


def test_a_composed_message_is_only_dot_stuffed_and_terminated() -> None:
    raw = outgoing(7).raw
    assert wire_form(raw) == aiosmtplib_form(raw)
    assert wire_form(raw).endswith(b"\r\n.\r\n")


@pytest.mark.parametrize(("address", "line"), [
    ("learner@example.org", b"<learner@example.org>"),
    ("learner@bücher.de", b"<learner@xn--bcher-kva.de>"),
    ("x@BÜCHER.example", b"<x@xn--bcher-kva.example>"),
])
def test_envelope_addresses_are_ascii_with_idna_domains(address: str, line: bytes) -> None:
    assert envelope_address(address) == line


@given(st.from_regex(_PLAIN_ADDRESS, fullmatch=True))
def test_a_plain_address_is_written_as_aiosmtplib_quotes_it(address: str) -> None:
    assert envelope_address(address) == quote_address(address).encode("ascii")


@pytest.mark.parametrize("address", ["jörg@example.org", "a@example.org\r\nRCPT TO:<b@example.org>", "a@\x00.org"])
def test_envelope_addresses_that_cannot_be_written_are_refused(address: str) -> None:
    with pytest.raises(ValueError):
        envelope_address(address)
