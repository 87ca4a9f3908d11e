"""SMTP relay provider: a pool of persistent aiosmtplib sessions sending pre-built messages concurrently.

Moodle core opens one SMTP session per mail; reusing a few sessions and sending the bytes composed once
is what lets one worker push thousands of messages a second through the same relay (FACTS.md).
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import PERIOD_REGEX, SMTPProtocol, normalize_message_line_endings

from adapters.email.base import OnEachResult, Outcome, OutgoingEmail, ProviderUnavailable, SendResult, report
from adapters.email.leases import FairLeases
from adapters.email.smtp_pipelining import (
    ReplyKeepingProtocol,
    data_accepted,
    keep_every_reply,
    pipelined_envelope,
    recipient_accepted,
    sender_accepted,
)
from resilience.dependencies import Dependencies
from resilience.reasons import one_line

SMTP_RELAY = "smtp-relay"  # its name in the process's dependency record (resilience.dependencies)

# Replies that mean "slow down" rather than "this message has a problem" (RFC 5321 + common relays).
_THROTTLE_CODES = frozenset({421, 451, 452, 454})
_THROTTLE_TEXT = re.compile(r"rate|too many|throttl|try again later", re.IGNORECASE)
_QUEUE_ID = re.compile(r"(?:queued as|\bid=)\s*([A-Za-z0-9._-]+)", re.IGNORECASE)


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")  # CR/LF/NUL in a command would inject another one


async def _command(protocol: SMTPProtocol, line: bytes) -> aiosmtplib.SMTPResponse:
    """Write one command (or DATA's content) and read its reply; the caller holds the session and the timer."""
    protocol.write(line)
    return await protocol.read_response(timeout=None)  # arms itself for the reply before the loop runs again


class _Unreachable(Exception):
    """No session could be opened to the relay (refused, DNS, TLS or authentication failure)."""


# What nearly every learner's address looks like; aiosmtplib's parsing below gives such an address back unchanged
# (tests/unit/test_smtp_wire.py checks it for any), at ~20 times the cost: 3-4 % of the worker's event loop.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def envelope_address(address: str) -> bytes:
    """``<address>`` as MAIL/RCPT carry it without SMTPUTF8: an internationalised domain in its IDNA form, as the
    composer writes it in To: (a non-ASCII local part has no ASCII form: ValueError, the learner's outcome)."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return b"<" + address.encode("ascii") + b">"
    if _CONTROL.search(address.encode("utf-8")):  # quote_address would quietly keep the part before a CRLF
        raise ValueError(f"address {address!r} contains a control character")
    local, at, domain = address.rpartition("@")
    if at and not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"unusable domain in {address!r}: {exc}") from None
        address = f"{local}@{domain}"
    quoted = quote_address(address)
    if not quoted.isascii():
        raise ValueError(f"address {address!r} is not ASCII and the relay is not asked for SMTPUTF8")
    return quoted.encode("ascii")


def wire_form(raw: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, lines starting with "." doubled, then the end mark.

    The composer already writes CRLF only (content.email.compose), so a message that is clean gets two cheap
    scans and one replace instead of aiosmtplib's regex passes (twice per message in sendmail)."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf or raw.count(b"\n") != crlf:
        raw = normalize_message_line_endings(raw)
        return PERIOD_REGEX.sub(b"..", raw) + b".\r\n"
    stuffed = raw.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


class _Envelope(NamedTuple):
    """One message as the session writes it: MAIL and RCPT (each with its CRLF) and DATA's content (``wire_form``)."""

    mail: bytes
    rcpt: bytes
    wire: bytes

    @property
    def commands(self) -> bytes:
        return self.mail + self.rcpt + b"DATA\r\n"


class _Ahead(NamedTuple):
    """The next message of a session, its envelope written in the same write as the previous message's content."""

    at: int  # its index in the batch
    envelope: _Envelope


def classify_reply(code: int, text: str) -> Outcome:
    """Outcome of a non-2xx SMTP reply: throttling, a transient (4xx) or a permanent (5xx) failure."""
    if 400 <= code < 500:
        return Outcome.THROTTLED if code in _THROTTLE_CODES or _THROTTLE_TEXT.search(text) else Outcome.RETRY
    if 500 <= code < 600:
        return Outcome.FAILED
    return Outcome.RETRY


class SmtpProvider:
    """Sends through an SMTP relay with ``connections`` persistent sessions shared by all batches.

    Sessions open lazily and reopen after a drop; aiosmtplib sends RSET itself after a refused
    transaction, so the session stays usable for the next message.
    """

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        mail_from: str,
        username: str | None = None,
        password: Any = None,  # str or pydantic SecretStr; never logged
        starttls: bool = False,
        use_tls: bool = False,
        connections: int = 8,
        timeout: float = 30.0,
        max_batch: int = 500,
        local_hostname: str | None = None,
        pipelining: bool = True,
        dependencies: Dependencies | None = None,  # where losing the relay is reported (the worker's health)
    ) -> None:
        if starttls and use_tls:
            raise ValueError("choose either starttls (upgrade) or use_tls (implicit TLS), not both")
        self.host, self.port, self.mail_from = host, port, mail_from
        self._mail_from = b"MAIL FROM:" + envelope_address(mail_from)
        self.max_batch = max_batch
        self._pipelining = pipelining  # used only where the relay advertises it (adapters.email.smtp_pipelining)
        self._username = username
        self._password = password.get_secret_value() if hasattr(password, "get_secret_value") else password
        self._starttls, self._use_tls, self._timeout = starttls, use_tls, timeout
        # socket.getfqdn() (aiosmtplib's default EHLO name) can block on a DNS lookup.
        self._local_hostname = local_hostname or socket.gethostname() or "localhost"
        self._dependencies = dependencies
        if dependencies is not None:
            dependencies.track(SMTP_RELAY)
        self._slots: list[aiosmtplib.SMTP | None] = [None] * max(1, connections)
        self._free = FairLeases(len(self._slots))  # sessions no batch is using, in the order batches asked
        self._unreachable: str | None = None  # why the last session could not be opened, until one opens

    async def start(self) -> None:
        """Open every session now so a wrong host or password shows at start-up, not on the first batch."""
        opened = await asyncio.gather(*(self._open() for _ in self._slots), return_exceptions=True)
        errors = [o for o in opened if isinstance(o, BaseException)]
        for i, smtp in enumerate(opened):
            if isinstance(smtp, BaseException):
                continue
            if self._slots[i] is None:
                self._slots[i] = smtp
            else:  # started twice: keep the session already there
                smtp.close()
        if len(errors) == len(self._slots):
            raise ProviderUnavailable(f"smtp {self.host}:{self.port}: {errors[0]}")

    async def stop(self) -> None:
        """Say QUIT on every open session."""
        for i in range(len(self._slots)):
            await self._drop(i, polite=True)

    async def send_batch(
        self, messages: Sequence[OutgoingEmail], on_result: OnEachResult | None = None
    ) -> list[SendResult]:
        """One SMTP transaction per message, spread over the pool; results in the order of ``messages``."""
        results: list[SendResult | None] = [None] * len(messages)
        pending = deque(range(len(messages)))
        unreachable: list[str] = []

        async def work() -> None:
            # Lease a session so concurrent batches never interleave on one connection.
            slot = await self._free.take()
            ahead: _Ahead | None = None  # the next message, its envelope written with the last one's content
            settled = True  # False while replies are on their way: a session left then cannot be used again
            try:
                while ahead is not None or pending:
                    if ahead is None:
                        index, early = pending.popleft(), None
                    else:
                        (index, early), ahead = ahead, None
                    settled = False
                    try:
                        result, ahead = await self._send_on(slot, messages, index, early, pending)
                    except _Unreachable as exc:
                        # Leave the message to a session that works; this one gives up for the batch.
                        pending.appendleft(index)
                        unreachable.append(str(exc))
                        return
                    settled = ahead is None
                    results[index] = result
                    await report(on_result, index, result)
            finally:
                if not settled:  # cancelled, or a bug, mid-transaction
                    self._discard(slot)
                    if ahead is not None:  # its content never went out: it was not sent
                        pending.appendleft(ahead.at)
                self._free.give(slot)

        async with asyncio.TaskGroup() as group:  # a bug in one worker cancels the others
            for _ in range(min(len(self._slots), len(messages))):
                group.create_task(work())
        if pending:
            reason = f"smtp {self.host}:{self.port}: {unreachable[-1]}"
            if all(r is None for r in results):
                raise ProviderUnavailable(reason)
            for index in pending:  # never handed to the relay: the outage must not cost them an attempt
                results[index] = SendResult(messages[index].key, Outcome.UNREACHED, error=one_line(reason))
        return [r for r in results if r is not None]

    async def _send_on(self, slot: int, messages: Sequence[OutgoingEmail], index: int, early: _Envelope | None,
                       pending: deque[int]) -> tuple[SendResult, _Ahead | None]:
        """``messages[index]`` on the leased session ``slot`` (reopened once if it was dropped); ``early``: its
        envelope, already written with the previous message's content. With the result comes the next message of
        ``pending`` if its envelope went out in the same write as this one's content (RFC 2920 3.1), else None:
        on a refusal of this content the server goes on to the next envelope; on a lost session it goes back to
        ``pending``, never having been sent."""
        msg = messages[index]
        for attempt in (1, 2):
            smtp = self._slots[slot]
            if smtp is None or not smtp.is_connected:
                early = None  # a new session: nothing of this message is on it
                smtp = self._slots[slot] = await self._open()
            taken: list[_Ahead] = []  # the next message, once its envelope follows this content
            try:
                envelope = early if early is not None else self._envelope(smtp, msg)
                reply = await self._transaction(smtp, msg, envelope, written=early is not None,
                                                then=partial(self._follow, smtp, messages, pending, taken))
            except aiosmtplib.SMTPResponseException as exc:  # MAIL FROM, RCPT TO, DATA or the content refused
                result = await self._refused(slot, msg, exc.code, exc.message)
                return result, self._kept_ahead(slot, taken, pending)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                # A dropped session (idle timeout, relay restart): reopen and try this message once more.
                await self._drop(slot)
                self._kept_ahead(slot, taken, pending)
                if attempt == 1:
                    continue
                return SendResult(msg.key, Outcome.RETRY, error=one_line(f"connection lost: {exc}")), None
            except aiosmtplib.SMTPTimeoutError:
                # The relay may or may not have taken the message; let the retry policy decide when.
                await self._drop(slot)
                self._kept_ahead(slot, taken, pending)
                return SendResult(msg.key, Outcome.RETRY, error="timeout waiting for the smtp server"), None
            except (ValueError, aiosmtplib.SMTPNotSupported) as exc:
                result = SendResult(msg.key, Outcome.FAILED, error=one_line(f"unusable message: {exc}"))
                return result, self._kept_ahead(slot, taken, pending)
            match = _QUEUE_ID.search(reply)
            sent = SendResult(msg.key, Outcome.SENT, provider_message_id=match.group(1) if match else msg.message_id)
            return sent, (taken[0] if taken else None)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns

    def _kept_ahead(self, slot: int, taken: list[_Ahead], pending: deque[int]) -> _Ahead | None:
        """The message whose envelope went out with this content, if the session that carries it is still open;
        else it goes back to ``pending`` (its content never went out)."""
        if not taken:
            return None
        smtp = self._slots[slot]
        if smtp is not None and smtp.is_connected:
            return taken[0]
        pending.appendleft(taken[0].at)
        return None

    def _envelope(self, smtp: aiosmtplib.SMTP, msg: OutgoingEmail) -> _Envelope:
        """What goes on the wire for ``msg``; ValueError if its address cannot be written (an unusable message)."""
        wire = wire_form(msg.raw)
        size = f" SIZE={len(wire) - 3}".encode("ascii") if smtp.supports_extension("size") else b""
        return _Envelope(self._mail_from + size + b"\r\n", b"RCPT TO:" + envelope_address(msg.to_address) + b"\r\n",
                         wire)

    def _follow(self, smtp: aiosmtplib.SMTP, messages: Sequence[OutgoingEmail], pending: deque[int],
                taken: list[_Ahead]) -> bytes:
        """The envelope of the next message of ``pending``, to follow a content in the same write, that message
        taken off ``pending`` into ``taken``; nothing if the relay does not pipeline or its address cannot be
        written (it stays, and fails on its own turn)."""
        if not pending or not isinstance(smtp.protocol, ReplyKeepingProtocol):
            return b""
        try:
            envelope = self._envelope(smtp, messages[pending[0]])
        except ValueError:
            return b""
        taken.append(_Ahead(pending.popleft(), envelope))
        return envelope.commands

    async def _transaction(self, smtp: aiosmtplib.SMTP, msg: OutgoingEmail, envelope: _Envelope, *, written: bool,
                           then: Callable[[], bytes]) -> str:
        """MAIL, RCPT and DATA for one message, pipelined where the relay allows it, else in lockstep; the final
        reply's text. ``written``: the envelope went out with the previous message's content; ``then``: the bytes
        that follow this content in the same write (the next message's envelope, or nothing).

        What aiosmtplib's ``sendmail`` does for one recipient, written straight to the session's protocol: no
        per-message address parsing, EHLO check or lock (the session is leased to one sender), no regex passes
        over the message (``wire_form``), and one timer per transaction, moved on at each command, instead of a
        ``wait_for`` per reply. Together about a third of the client's CPU per message. Each round trip still has
        ``timeout`` seconds. A refusal raises SMTPResponseException once the envelope is reset (RSET; not while
        the next envelope is on its way: the server has ended this transaction and goes on to that one); a
        timeout closes the session and raises SMTPTimeoutError.
        """
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        loop = asyncio.get_running_loop()
        following = b""
        try:
            async with asyncio.timeout(self._timeout) as deadline:
                if isinstance(protocol, ReplyKeepingProtocol):  # the relay pipelines (adapters.email.smtp_pipelining)
                    await pipelined_envelope(protocol, envelope.mail, envelope.rcpt, mail_from=self.mail_from,
                                             to_address=msg.to_address, written=written)
                else:
                    sender_accepted(await _command(protocol, envelope.mail), self.mail_from)
                    deadline.reschedule(loop.time() + self._timeout)
                    recipient_accepted(await _command(protocol, envelope.rcpt), msg.to_address)
                    deadline.reschedule(loop.time() + self._timeout)
                    data_accepted(await _command(protocol, b"DATA\r\n"))
                deadline.reschedule(loop.time() + self._timeout)
                following = then()
                reply = await _command(protocol, envelope.wire + following)
                if reply.code != 250:
                    raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        except TimeoutError:
            smtp.close()  # a reply may still come: the session cannot be trusted to pair replies any more
            raise aiosmtplib.SMTPTimeoutError("Timed out waiting for server response") from None
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code != 421 and not following:  # 421: the server is closing the session (the caller drops it)
                try:
                    await smtp.rset()
                except (ConnectionError, aiosmtplib.SMTPException):
                    pass  # the session is dropped or reopened by the caller if it is gone
            raise
        return reply.message

    async def _refused(self, slot: int, msg: OutgoingEmail, code: int, text: str) -> SendResult:
        if code == 421:
            await self._drop(slot)  # 421 means the server is closing this session
        outcome = classify_reply(code, text)
        return SendResult(msg.key, outcome, error=one_line(f"{code} {text}"))

    async def _open(self) -> aiosmtplib.SMTP:
        """A greeted session; the relay recorded as lost (with the reason) or back in the process's health."""
        try:
            smtp = await self._connect()
        except _Unreachable as exc:
            self._unreachable = str(exc)
            if self._dependencies is not None:
                self._dependencies.lost(SMTP_RELAY, f"{self.host}:{self.port}: {exc}", recheck=self.recheck)
            raise
        self._unreachable = None
        if self._dependencies is not None:
            self._dependencies.restored(SMTP_RELAY)
        return smtp

    def unreachable_and_idle(self) -> str | None:
        """Why the relay cannot be reached, while no session to it is open (so no message is on its way to it: a
        message goes out only on an open session); else None. A send that tries to open one meanwhile sends
        nothing until it does, which may take the whole connect timeout of a relay that does not answer."""
        if self._unreachable is None or any(smtp is not None for smtp in self._slots):
            return None
        return f"{self.name} unavailable: {self.name} {self.host}:{self.port}: {self._unreachable}"

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self._timeout,
            use_tls=self._use_tls,
            start_tls=self._starttls,
            username=self._username,
            password=self._password,
            local_hostname=self._local_hostname,
        )
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:  # greeted once per session, not checked per message (_transaction)
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()
            if self._pipelining:
                keep_every_reply(smtp)  # only if the relay advertises PIPELINING
        except aiosmtplib.SMTPAuthenticationError as exc:
            smtp.close()
            raise _Unreachable(f"authentication failed ({exc.code})") from None
        except (OSError, aiosmtplib.SMTPException) as exc:
            smtp.close()
            raise _Unreachable(one_line(exc) or type(exc).__name__) from None
        return smtp

    async def recheck(self) -> None:
        """Open a session and QUIT it: whether the relay answers now (health asks while it is lost; an idle worker
        would otherwise say it is lost until its next batch). Raises ConnectionError with the reason if not; the
        watch that asks (resilience.dependencies.recheck_lost) records the answer."""
        try:
            smtp = await self._connect()
        except _Unreachable as exc:
            raise ConnectionError(f"{self.host}:{self.port}: {exc}") from None
        try:
            await smtp.quit()
        except (OSError, aiosmtplib.SMTPException):
            smtp.close()

    def _discard(self, slot: int) -> None:
        """Close the session at once (replies of a transaction may still be on their way)."""
        smtp, self._slots[slot] = self._slots[slot], None
        if smtp is not None:
            smtp.close()

    async def _drop(self, slot: int, *, polite: bool = False) -> None:
        """Close the session; ``polite``: say QUIT first where it is still connected."""
        smtp = self._slots[slot]
        if not (polite and smtp is not None and smtp.is_connected):
            self._discard(slot)
            return
        self._slots[slot] = None
        try:
            await smtp.quit()
        except (OSError, aiosmtplib.SMTPException):
            smtp.close()
