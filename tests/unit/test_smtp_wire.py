"""What DATA carries for a message: the lean transaction's wire form equals aiosmtplib's own encoding."""

from __future__ import annotations

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from adapters.email.smtp import wire_form
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
