"""SMTP PIPELINING (RFC 2920) for the relay sessions: MAIL, RCPT and DATA go out in one write.

In lockstep a message costs four round trips (MAIL, RCPT, DATA, the content), each a write, a wait and a wake-up
for the reply on both sides. Pipelined, the envelope is one write and its three replies come back together, and
the next message's envelope goes out in the same write as this one's content (adapters.email.smtp): one round trip
per message. Used only with a relay that advertises PIPELINING in its EHLO reply (Postfix, Exim and most relays
do).

aiosmtplib's protocol reads one reply per command and drops bytes that arrive while a reply waits to be picked
up ("if multiple commands are written to the transport without awaiting, response data will be lost"), so a
pipelining session's protocol is switched to ``ReplyKeepingProtocol``, which keeps every reply, in order.
"""

from __future__ import annotations

from collections import deque

import aiosmtplib
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol
from aiosmtplib.response import SMTPResponse

_CLOSING = 421  # the server is closing the session: the caller drops it, nothing more is read from it


class ReplyKeepingProtocol(SMTPProtocol):
    """aiosmtplib's protocol, keeping every complete reply until it is read, in the order received.

    The response waiter always holds the oldest reply not yet read; later ones wait in ``_kept``. Data that
    arrives between commands is kept too (the stock protocol drops it), so an unsolicited reply, such as a
    ``421`` before the server closes, is what the next command reads: that session is then dropped."""

    _kept: deque[SMTPResponse]

    @classmethod
    def adopt(cls, protocol: SMTPProtocol) -> ReplyKeepingProtocol:
        """The same protocol object, now keeping every reply: the transport stays bound to it, as does
        aiosmtplib's SMTP. Call between commands, with no reply outstanding."""
        if not isinstance(protocol, cls):
            protocol.__class__ = cls
            assert isinstance(protocol, cls)
            protocol._kept = deque()
            # Handed to its transport again: uvloop's transports keep the protocol's bound ``data_received`` from
            # when the protocol was set, and would go on calling the stock one, which drops replies that arrive
            # together (asyncio's look the method up on every read).
            if protocol.transport is not None:
                protocol.transport.set_protocol(protocol)
        return protocol

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        if waiter is None:  # the connection is gone
            return
        self._buffer.extend(data)
        if len(self._buffer) > MAX_RESPONSE_LENGTH:
            del self._buffer[:]
            if not waiter.done():
                self._set_response_exception(waiter, aiosmtplib.SMTPResponseException(
                    aiosmtplib.SMTPStatus.invalid_response.value, "Response too long"))
            return
        try:
            while (response := self._read_response_from_buffer()) is not None:
                if waiter.done():
                    self._kept.append(response)
                else:
                    waiter.set_result(response)
        except Exception as exc:  # a malformed reply: whoever reads next gets the error
            if not waiter.done():
                self._set_response_exception(waiter, exc)

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:
        response = await super().read_response(timeout)  # a new waiter is in place once this returns
        if self._kept and self._response_waiter is not None:
            self._response_waiter.set_result(self._kept.popleft())
        return response


def keep_every_reply(smtp: aiosmtplib.SMTP) -> bool:
    """Switch a connected session's protocol to ``ReplyKeepingProtocol`` if the server advertises PIPELINING;
    whether it did. Called between commands, with no reply outstanding, so nothing received is lost."""
    protocol = smtp.protocol
    if protocol is None or not smtp.supports_extension("pipelining"):
        return False
    ReplyKeepingProtocol.adopt(protocol)
    return True


def sender_accepted(reply: SMTPResponse, mail_from: str) -> None:
    """MAIL FROM's reply, as aiosmtplib's lockstep command reads it: anything but 250 is a refusal."""
    if reply.code != 250:
        raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, mail_from)


def recipient_accepted(reply: SMTPResponse, to_address: str) -> None:
    """RCPT TO's reply: 250 or 251 (forwarded), else a refusal."""
    if reply.code not in (250, 251):
        raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, to_address)


def data_accepted(reply: SMTPResponse) -> None:
    """DATA's reply: 354, go ahead with the content."""
    if reply.code != 354:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


async def pipelined_envelope(protocol: ReplyKeepingProtocol, mail: bytes, rcpt: bytes, *, mail_from: str,
                             to_address: str, written: bool = False) -> None:
    """MAIL, RCPT and DATA in one write, then their replies; returns once DATA was answered 354. ``written``: the
    three went out already, after the previous message's content in the same write (RFC 2920 3.1: content may
    open a group), so only their replies are read.

    A refusal raises the exception aiosmtplib's lockstep commands raise for it, once all three replies are read,
    so none is left over to be paired with a later command (the caller then resets the envelope). If DATA was
    accepted although MAIL or RCPT was not, the content is a lone dot, as RFC 2920 asks. A 421 raises at once:
    the server is closing the session and the caller drops it."""
    if not written:
        protocol.write(mail + rcpt + b"DATA\r\n")
    mail_reply = await protocol.read_response(timeout=None)
    if mail_reply.code == _CLOSING:
        sender_accepted(mail_reply, mail_from)  # raises
    rcpt_reply = await protocol.read_response(timeout=None)
    if rcpt_reply.code == _CLOSING:
        recipient_accepted(rcpt_reply, to_address)  # raises
    data_reply = await protocol.read_response(timeout=None)
    refused = mail_reply.code != 250 or rcpt_reply.code not in (250, 251)
    if refused and data_reply.code == 354:
        protocol.write(b".\r\n")
        await protocol.read_response(timeout=None)
    sender_accepted(mail_reply, mail_from)
    recipient_accepted(rcpt_reply, to_address)
    data_accepted(data_reply)
