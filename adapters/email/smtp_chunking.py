"""SMTP CHUNKING (RFC 3030) for the relay sessions: each message's content goes as one counted chunk, ``BDAT n
LAST``, in the same write as its MAIL and RCPT.

DATA must end a pipelined group (RFC 2920 3.1): the client waits for its 354 before the content, so a message
costs at least one round trip, and a session carries one message at a time. BDAT has no such reply to wait for
(RFC 3030 4.2: it may be pipelined), so a session writes several messages before the first is answered and reads
their replies as they come: a window per session (``SmtpProvider``, ``smtp_window``). The relay reads a counted
chunk without scanning for the end mark or undoing dot-stuffing. Postfix (3.0 on) and Exim (4.88 on) advertise
CHUNKING by default; it is used only where the relay advertises PIPELINING too.

Each message starts with RSET. RFC 3030 (2) calls a relay's state after a refused BDAT indeterminate, and asks for
a RSET before the next transaction; but the next message is on the wire before that refusal comes. Exim keeps the
refused transaction open: it answers the next MAIL "503 sender already given" (a protocol error: it ends the
session after a few), then takes that message's RCPT and chunk into the open transaction. A client that took the
503 for a refusal sent that learner's message twice. Postfix resets by itself. RSET costs a short reply; Exim
counts those beyond one per message taken, and answers the eleventh 421 (smtp_accept_max_nonmail).

Each message's four replies are read in order. After a refused MAIL or RCPT the relay refuses the chunk as well
("no valid recipients"): the first refusal is the message's. A chunk answered 250 was taken, whatever came before.
"""

from __future__ import annotations

from aiosmtplib.response import SMTPResponse

from adapters.email.smtp_pipelining import ReplyKeepingProtocol

_CLOSING = 421  # the server is closing the session: no further reply comes on it
_ACCEPTED = (("RSET", (250,)), ("MAIL", (250,)), ("RCPT", (250, 251)), ("BDAT", (250,)))  # 251: forwarded


def chunked_transaction(mail: bytes, rcpt: bytes, chunk: bytes) -> bytes:
    """RSET, MAIL and RCPT (each with its CRLF) and the content as one last chunk: one message's whole
    transaction."""
    return b"".join((b"RSET\r\n", mail, rcpt, b"BDAT %d LAST\r\n" % len(chunk), chunk))


async def chunked_replies(protocol: ReplyKeepingProtocol) -> list[SMTPResponse]:
    """The replies to one message's RSET, MAIL, RCPT and BDAT, in order; fewer if one is a 421 (the server is
    closing the session, so nothing more will come)."""
    replies = []
    for _ in range(len(_ACCEPTED)):
        reply = await protocol.read_response(timeout=None)
        replies.append(reply)
        if reply.code == _CLOSING:
            break
    return replies


def chunked_refusal(replies: list[SMTPResponse]) -> tuple[str, SMTPResponse] | None:
    """The command that refused the message (``MAIL``, ``RCPT`` or ``BDAT``; ``RSET`` only with 421: the relay closed
    the session before the message) and its reply, or None if the relay took it: its chunk answered 250, even after
    a refusal (sending it again would send it twice). Else the first refusal."""
    if len(replies) == len(_ACCEPTED) and replies[-1].code == 250:
        return None
    for reply, (command, accepted) in zip(replies, _ACCEPTED, strict=False):  # a 421 ends the replies: a refusal
        if reply.code not in accepted and (command != "RSET" or reply.code == _CLOSING):
            return command, reply
    return None
