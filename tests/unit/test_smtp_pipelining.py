"""SMTP PIPELINING's rules (adapters.email.smtp_pipelining): every reply is kept and read in order however the
server's bytes arrive, and a refused envelope reads all its replies and never sends a message's content."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import aiosmtplib
import pytest
import uvloop
from aiosmtplib.protocol import SMTPProtocol

from adapters.email.smtp_pipelining import ReplyKeepingProtocol, pipelined_envelope

MAIL = b"MAIL FROM:<a@example.com>\r\n"
RCPT = b"RCPT TO:<b@example.com>\r\n"


class ScriptedServer:
    """A transport whose peer answers each write with the chunks the test gives, each in a loop turn of its own
    (so a later one can land while an earlier reply waits to be read)."""

    def __init__(self, answers: dict[bytes, list[bytes]]) -> None:
        self.answers = answers
        self.written: list[bytes] = []
        self.protocol: SMTPProtocol | None = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        assert self.protocol is not None
        for delay, chunk in enumerate(self.answers.get(data, [])):
            asyncio.get_running_loop().call_later(0.001 * delay, self.protocol.data_received, chunk)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass

    def set_protocol(self, protocol: SMTPProtocol) -> None:
        self.protocol = protocol


def connected(server: ScriptedServer) -> ReplyKeepingProtocol:
    protocol = SMTPProtocol(loop=asyncio.get_running_loop())
    protocol.connection_made(server)  # type: ignore[arg-type]
    server.protocol = protocol
    kept = ReplyKeepingProtocol.adopt(protocol)
    assert kept is protocol
    return kept


async def read_all(protocol: ReplyKeepingProtocol, count: int) -> list[tuple[int, str]]:
    replies = []
    for _ in range(count):
        reply = await asyncio.wait_for(protocol.read_response(), 1)
        replies.append((reply.code, reply.message))
    return replies


@pytest.mark.parametrize("chunks", [
    [b"220 hi\r\n250 one\r\n250-two\r\n250 two more\r\n354 go\r\n"],  # all at once
    [b"220 hi\r\n", b"250 one\r\n", b"250-two\r\n250 two more\r\n", b"354 go\r\n"],  # apart, before any is read
    [b"220 hi\r\n250 o", b"ne\r\n250-two\r", b"\n250 two more\r\n354", b" go\r\n"],  # split inside lines
])
async def test_every_reply_is_read_in_order_however_it_arrives(chunks: list[bytes]) -> None:
    server = ScriptedServer({b"go": chunks})
    protocol = connected(server)
    protocol.write(b"go")
    await asyncio.sleep(0.02)  # every chunk has landed before the first reply is read
    assert await read_all(protocol, 4) == [(220, "hi"), (250, "one"), (250, "two\ntwo more"), (354, "go")]


async def test_the_stock_protocol_loses_replies_that_land_while_one_waits() -> None:
    """Why the protocol is switched: aiosmtplib's own drops the second reply when they arrive apart."""
    server = ScriptedServer({b"go": [b"250 one\r\n", b"250 two\r\n"]})
    protocol = SMTPProtocol(loop=asyncio.get_running_loop())
    protocol.connection_made(server)  # type: ignore[arg-type]
    server.protocol = protocol
    protocol.write(b"go")
    await asyncio.sleep(0.02)
    assert (await protocol.read_response()).message == "one"
    with pytest.raises(aiosmtplib.SMTPReadTimeoutError):
        await protocol.read_response(timeout=0.05)


async def envelope(protocol: ReplyKeepingProtocol) -> None:
    await asyncio.wait_for(
        pipelined_envelope(protocol, MAIL, RCPT, mail_from="a@example.com", to_address="b@example.com"), 1)


async def test_an_accepted_envelope_is_one_write_and_returns_at_354() -> None:
    server = ScriptedServer({MAIL + RCPT + b"DATA\r\n": [b"250 ok\r\n", b"250 ok\r\n", b"354 go ahead\r\n"]})
    await envelope(connected(server))
    assert server.written == [MAIL + RCPT + b"DATA\r\n"]


async def test_a_refused_recipient_reads_every_reply_and_sends_a_lone_dot_if_data_was_accepted() -> None:
    server = ScriptedServer({MAIL + RCPT + b"DATA\r\n": [b"250 ok\r\n", b"550 no such user\r\n", b"354 go\r\n"],
                             b".\r\n": [b"554 no valid recipients\r\n"]})
    protocol = connected(server)
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await envelope(protocol)
    assert refused.value.code == 550
    assert server.written == [MAIL + RCPT + b"DATA\r\n", b".\r\n"]  # never the message's content
    assert protocol._kept == deque()  # nothing left over for the next command


async def test_a_refused_sender_reads_the_recipient_and_data_replies_before_raising() -> None:
    server = ScriptedServer({MAIL + RCPT + b"DATA\r\n": [b"550 sender refused\r\n", b"503 need MAIL\r\n",
                                                         b"503 need RCPT\r\n"],
                             b"RSET\r\n": [b"250 reset\r\n"]})
    protocol = connected(server)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await envelope(protocol)
    assert refused.value.code == 550
    assert server.written == [MAIL + RCPT + b"DATA\r\n"]
    protocol.write(b"RSET\r\n")  # the next command is paired with its own reply, not a left-over one
    assert await read_all(protocol, 1) == [(250, "reset")]


async def test_data_refused_raises_a_data_error() -> None:
    server = ScriptedServer({MAIL + RCPT + b"DATA\r\n": [b"250 ok\r\n", b"250 ok\r\n", b"451 try later\r\n"]})
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await envelope(connected(server))
    assert refused.value.code == 451


async def test_a_closing_server_raises_at_once() -> None:
    """421: the server is going away; its other replies may never come, so nothing more is awaited."""
    server = ScriptedServer({MAIL + RCPT + b"DATA\r\n": [b"421 closing\r\n"]})
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await envelope(connected(server))
    assert refused.value.code == 421


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_switched_protocol_keeps_every_reply_on_a_real_connection(new_loop: Any) -> None:
    """On a socket of either loop the worker may run (offload/loop.py). uvloop's transport keeps the protocol's
    bound ``data_received`` from when the protocol was set: unless the switched protocol is handed to it again,
    the stock method goes on reading, and the replies after the first are lost (the send then waits forever)."""

    async def replies() -> list[tuple[int, str]]:
        read = asyncio.Event()

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 hi\r\n")
            await reader.readline()
            for reply in (b"250 one\r\n", b"250 two\r\n", b"354 go\r\n"):  # apart, none read yet
                writer.write(reply)
                await writer.drain()
                await asyncio.sleep(0.01)
            await read.wait()  # then closed, so no handle of it is left when the loop closes (uvloop checks)
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(lambda: SMTPProtocol(loop=loop), "127.0.0.1", port)
        try:
            assert (await protocol.read_response(timeout=5)).code == 220
            kept = ReplyKeepingProtocol.adopt(protocol)
            kept.write(b"go\r\n")
            await asyncio.sleep(0.1)  # every reply has landed before the first is read
            return await read_all(kept, 3)
        finally:
            read.set()
            transport.close()
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        assert runner.run(replies()) == [(250, "one"), (250, "two"), (354, "go")]
