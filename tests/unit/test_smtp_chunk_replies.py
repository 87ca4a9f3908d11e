"""Reading one BDAT message's four replies (RSET, MAIL, RCPT, BDAT) into its refusal, or none if the relay took it."""

from __future__ import annotations

import pytest
from aiosmtplib.response import SMTPResponse

from adapters.email.smtp_chunking import chunked_refusal, chunked_transaction


def replies(*codes_and_texts: tuple[int, str]) -> list[SMTPResponse]:
    return [SMTPResponse(code, text) for code, text in codes_and_texts]


OK = (250, "OK")


def test_each_message_starts_with_rset() -> None:
    assert chunked_transaction(b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n", b"x\r\n") == \
        b"RSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 3 LAST\r\nx\r\n"


def test_a_chunk_answered_250_was_taken_whatever_came_before() -> None:
    # Exim left in the previous message's refused transaction: MAIL is "already given", the rest goes into it.
    assert chunked_refusal(replies(OK, (503, "sender already given"), OK, (250, "OK id=1xZpVk-0004Nk-17"))) is None


@pytest.mark.parametrize(("answers", "refused"), [
    ([OK, OK, (550, "5.1.1 no such user"), (503, "Valid RCPT command must precede BDAT")], ("RCPT", 550)),
    ([OK, (553, "sender rejected"), (503, "need MAIL"), (503, "need MAIL")], ("MAIL", 553)),
    ([OK, OK, OK, (554, "5.7.1 rejected: spam")], ("BDAT", 554)),
    ([(421, "too many nonmail commands")], ("RSET", 421)),  # closed before the message: it was not sent
    ([(502, "not implemented"), OK, (550, "no such user"), (554, "no valid recipients")], ("RCPT", 550)),
])
def test_otherwise_the_first_refusal_is_the_messages_and_rset_counts_only_when_it_closes_the_session(
    answers: list[tuple[int, str]], refused: tuple[str, int]
) -> None:
    found = chunked_refusal(replies(*answers))
    assert found is not None and (found[0], found[1].code) == refused


def test_a_relay_that_took_everything_refused_nothing() -> None:
    assert chunked_refusal(replies(OK, OK, OK, OK)) is None
