"""CHUNKING (RFC 3030) on real loopback sessions: the dev sink's BDAT as a client other than ours drives it, and the
rules of the SMTP adapter's window (adapters.email.smtp_chunking, SmtpProvider._stream)."""

from __future__ import annotations

import smtplib
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.email.base import Outcome
from adapters.email.smtp import SmtpProvider
from devtools.devmail import DevMailSink
from tests.support.email import MAIL_FROM, address_of, outgoing

pytestmark = pytest.mark.integration


@pytest.fixture
def sink() -> Iterator[DevMailSink]:
    with DevMailSink() as running:
        yield running


def greeted(sink: DevMailSink) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test", timeout=5)
    client.ehlo()
    assert client.has_extn("chunking") and client.has_extn("pipelining")
    return client


def bdat(client: smtplib.SMTP, chunk: bytes, *, last: bool) -> tuple[int, bytes]:
    client.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
    return client.getreply()


def test_the_sink_joins_the_chunks_of_a_message_and_undoes_nothing_in_them(sink: DevMailSink) -> None:
    client = greeted(sink)
    try:
        assert client.docmd("MAIL FROM:<a@example.org>")[0] == 250
        assert client.docmd("RCPT TO:<b@example.org>")[0] == 250
        head = b"Subject: chunked\r\nMessage-ID: <1@example.org>\r\n\r\n"
        assert bdat(client, head, last=False) == (250, b"2.0.0 %d octets received" % len(head))
        code, text = bdat(client, b".a line starting with a dot\r\n.\r\n", last=True)
        assert code == 250 and b"queued as" in text
    finally:
        client.quit()
    (got,) = sink.messages()
    assert got.raw == head + b".a line starting with a dot\r\n.\r\n"  # no dot-stuffing to undo, no end mark
    assert got.rcpt_tos == ("b@example.org",) and got.message_id == "<1@example.org>"


def test_a_chunk_without_a_transaction_is_read_and_refused_and_the_session_goes_on(sink: DevMailSink) -> None:
    client = greeted(sink)
    try:
        assert bdat(client, b"RSET\r\n", last=True)[0] == 503  # no MAIL: the chunk's bytes are not a command
        assert client.docmd("MAIL FROM:<a@example.org>")[0] == 250
        assert bdat(client, b"x\r\n", last=True)[0] == 554  # no recipient
        assert client.docmd("MAIL FROM:<a@example.org>")[0] == 250  # BDAT LAST ended that transaction
        assert client.docmd("RCPT TO:<b@example.org>")[0] == 250
        assert bdat(client, b"y\r\n", last=True)[0] == 250
    finally:
        client.quit()
    assert [m.raw for m in sink.messages()] == [b"y\r\n"]


def test_a_chunk_without_its_size_closes_the_session(sink: DevMailSink) -> None:
    # Without the size the chunk's bytes cannot be told from the next command: the relay cannot go on.
    client = greeted(sink)
    assert client.docmd("BDAT LAST")[0] == 501
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.docmd("NOOP")
    client.close()


class StickyRelay(DevMailSink):
    """A relay that, once a recipient of a transaction was refused, answers every MAIL with 503 (bad sequence)
    until RSET: the state RFC 3030 calls indeterminate, which a relay may keep after a refused last chunk."""

    def __init__(self, refused: str) -> None:
        super().__init__()
        self.refused = refused
        self.resets = 0
        self.stuck: weakref.WeakSet[Any] = weakref.WeakSet()  # sessions answering 503 until RSET

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, mail_options: list) -> str:
        if session in self.stuck:
            return "503 5.5.1 Error: nested MAIL command"
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list) -> str:
        if address == self.refused:
            self.stuck.add(session)
            return "550 5.1.1 No such user here"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self.stuck.discard(session)
        self.resets += 1
        return "250 OK"


async def test_a_relay_left_in_a_refused_transaction_takes_the_next_messages_as_each_starts_with_rset() -> None:
    # Four messages on the wire at once; the first's recipient is refused, and this relay would then answer 503 to
    # the three behind it until RSET. Each message starts with one, so they are sent at once, each once.
    relay = StickyRelay(refused=address_of(0))
    with relay:
        provider = SmtpProvider("127.0.0.1", relay.port, mail_from=MAIL_FROM, connections=1, window=4, timeout=5)
        await provider.start()
        try:
            results = await provider.send_batch([outgoing(i) for i in range(6)])
        finally:
            await provider.stop()
        assert [r.outcome for r in results] == [Outcome.FAILED] + [Outcome.SENT] * 5
        assert "550" in (results[0].error or "")
        assert relay.recipient_counts() == {address_of(i): 1 for i in range(1, 6)}
        assert relay.resets == 6


class ClosingOnReset(DevMailSink):
    """A relay that closes the session at every RSET (as Exim does past its limit of commands that carry no
    mail), counting the sessions it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions = 0

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list) -> list:
        self.sessions += 1
        return await super().handle_EHLO(server, session, envelope, hostname, responses)

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        return "421 4.7.0 too many nonmail commands"


async def test_a_message_whose_reset_closes_the_session_twice_is_settled_by_that_reply_not_tried_forever() -> None:
    relay = ClosingOnReset()
    with relay:
        provider = SmtpProvider("127.0.0.1", relay.port, mail_from=MAIL_FROM, connections=1, window=4, timeout=5)
        try:
            results = await provider.send_batch([outgoing(i) for i in range(3)])
        finally:
            await provider.stop()
    # Each message: closed once (not sent, tried on a new session), closed again: throttled, no attempt spent.
    assert [(r.outcome, r.error) for r in results] == [(Outcome.THROTTLED, "421 4.7.0 too many nonmail commands")] * 3
    assert relay.sessions == 2 * 3
    assert relay.recipient_counts() == {}


async def test_a_session_keeps_up_to_its_window_of_messages_on_the_wire(sink: DevMailSink) -> None:
    provider = SmtpProvider("127.0.0.1", sink.port, mail_from=MAIL_FROM, connections=1, window=3, timeout=5)
    await provider.start()
    session = provider._slots[0]
    assert session is not None and session.protocol is not None
    protocol = session.protocol
    written: list[bytes] = []
    write = protocol.write

    def recording(data: bytes) -> None:
        written.append(data)
        write(data)

    protocol.write = recording  # type: ignore[method-assign]
    try:
        results = await provider.send_batch([outgoing(i) for i in range(7)])
    finally:
        await provider.stop()
    assert [r.outcome for r in results] == [Outcome.SENT] * 7
    transactions = [data.count(b"\r\nBDAT ") for data in written if b"BDAT" in data]
    assert transactions[0] == 3 and sum(transactions) == 7 and max(transactions) == 3
    assert sink.recipient_counts() == {address_of(i): 1 for i in range(7)}
