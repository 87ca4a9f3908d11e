"""SMTP relay provider: a pool of persistent aiosmtplib sessions sending pre-built messages concurrently.

Moodle core opens one SMTP session per mail; reusing a few sessions and sending the bytes composed once
is what lets one worker push thousands of messages a second through the same relay (FACTS.md).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import weakref
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import PERIOD_REGEX, SMTPProtocol, normalize_message_line_endings
from aiosmtplib.response import SMTPResponse

from adapters.email.base import OnEachResult, Outcome, OutgoingEmail, ProviderUnavailable, SendResult, report
from adapters.email.leases import FairLeases
from adapters.email.smtp_chunking import chunked_refusal, chunked_replies, chunked_transaction
from adapters.email.smtp_pipelining import (
    ReplyKeepingProtocol,
    data_accepted,
    keep_every_reply,
    pipelined_envelope,
    recipient_accepted,
    sender_accepted,
)
from adapters.email.smtp_replies import classify_reply, denies_relaying, refuses_worker, without_addresses
from resilience.dependencies import Dependencies
from resilience.reasons import one_line

log = logging.getLogger(__name__)

SMTP_RELAY = "smtp-relay"  # its name in the process's dependency record (resilience.dependencies)

_SAMPLE = 3  # learners whose denied relaying a new session asks about again (each refusal counts as a relay error)
_QUEUE_ID = re.compile(r"(?:queued as|\bid=)\s*([A-Za-z0-9._-]+)", re.IGNORECASE)


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")  # CR/LF/NUL in a command would inject another one


async def _command(protocol: SMTPProtocol, line: bytes) -> aiosmtplib.SMTPResponse:
    """Write one command (or DATA's content) and read its reply; the caller holds the session and the timer."""
    protocol.write(line)
    return await protocol.read_response(timeout=None)  # arms itself for the reply before the loop runs again


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    """Say QUIT, or close the session if it is gone."""
    try:
        await smtp.quit()
    except (OSError, aiosmtplib.SMTPException):
        smtp.close()


class _Unreachable(Exception):
    """No session could be opened to the relay (refused, DNS, TLS or authentication failure). ``greeted``: the relay
    answered the connection with a refusal (e.g. Postfix's "421 … too many connections from …"): it is there."""

    def __init__(self, reason: str, *, greeted: bool = False) -> None:
        super().__init__(reason)
        self.greeted = greeted


class _RefusesWorker(_Unreachable):
    """The relay answers, but takes no mail from this worker as it is set up (adapters.email.smtp_replies): for the
    sends, it is unavailable like one that cannot be reached; the session that heard it is closed."""


class _Closed(Exception):
    """The relay answered 421: it closes the session (RFC 5321 3.8) without serving what was written after the
    command it refused, so the rest of a window was not sent; the session is dropped."""


@dataclass
class _Batch:
    """One ``send_batch``: its messages, those no session has taken yet (``pending``, by index), and each result as
    it is settled (``settle``)."""

    messages: Sequence[OutgoingEmail]
    on_result: OnEachResult | None
    on_sent: Callable[[], None]  # told of each message the relay took
    pending: deque[int] = field(init=False)
    results: list[SendResult | None] = field(init=False)
    cut_off: Counter[int] = field(default_factory=Counter)  # sessions lost while it was the first unanswered on one
    # Relaying denied by a session that had taken no message yet, with that session and its reply (code, text):
    # judged once every message has been tried (SmtpProvider._judge_denials).
    denied: dict[int, tuple[aiosmtplib.SMTP, int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pending = deque(range(len(self.messages)))
        self.results = [None] * len(self.messages)

    async def settle(self, index: int, result: SendResult) -> None:
        self.results[index] = result
        if result.outcome is Outcome.SENT:
            self.on_sent()
        await report(self.on_result, index, result)


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
    if not _crlf_only(raw):
        raw = normalize_message_line_endings(raw)
        return PERIOD_REGEX.sub(b"..", raw) + b".\r\n"
    stuffed = raw.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def chunk_form(raw: bytes) -> bytes:
    """The message as BDAT carries it (RFC 3030 3): CRLF line ends, ending with one, nothing doubled, no end mark:
    the same bytes DATA delivers."""
    if not _crlf_only(raw):
        raw = normalize_message_line_endings(raw)
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


def _crlf_only(raw: bytes) -> bool:
    """Every line ends with CRLF, and no CR or LF stands alone (how the composer writes a message)."""
    crlf = raw.count(b"\r\n")
    return raw.count(b"\r") == crlf and raw.count(b"\n") == crlf


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


def _refused_command(exc: aiosmtplib.SMTPResponseException) -> str:
    """The command a lockstep or pipelined transaction's refusal answered: MAIL, RCPT, or DATA (or the content)."""
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return "MAIL"
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return "RCPT"
    return "DATA"


def _sent(msg: OutgoingEmail, reply: str) -> SendResult:
    """A message the relay took; its queue id as the relay gave it in ``reply``, else the Message-ID."""
    match = _QUEUE_ID.search(reply)
    return SendResult(msg.key, Outcome.SENT, provider_message_id=match.group(1) if match else msg.message_id)


def _unusable(msg: OutgoingEmail, exc: Exception) -> SendResult:
    return SendResult(msg.key, Outcome.FAILED, error=one_line(f"unusable message: {exc}"))


def _timed_out(msg: OutgoingEmail) -> SendResult:
    """The relay did not answer in time: it may or may not have taken the message (the retry policy decides)."""
    return SendResult(msg.key, Outcome.RETRY, error="timeout waiting for the smtp server")


def _lost(msg: OutgoingEmail, exc: Exception) -> SendResult:
    """The session was lost before the message's reply, for the second time: left to the retry policy."""
    return SendResult(msg.key, Outcome.RETRY, error=one_line(f"connection lost: {exc}"))


def _trusting(ca_file: str) -> ssl.SSLContext:
    """A client context that trusts the CA certificates in ``ca_file`` (PEM), and checks names as always."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"smtp: cannot load the relay's CA certificates from {ca_file}: {one_line(exc)}") from None


class SmtpProvider:
    """Sends through an SMTP relay with ``connections`` persistent sessions shared by all batches.

    Sessions open lazily and reopen after a drop; after a refused transaction the envelope is reset (RSET), so the
    session stays usable for the next message. Where the relay advertises PIPELINING and CHUNKING, a session keeps
    up to ``window`` messages on the wire (``_stream``, adapters.email.smtp_chunking); else one at a time, its
    content followed by the next message's envelope (``_send_on``, adapters.email.smtp_pipelining), or in lockstep.
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
        ca_file: str | None = None,  # CA certificates (PEM) the relay's is checked against, instead of the system's
        connections: int = 8,
        timeout: float = 30.0,
        max_batch: int = 500,
        local_hostname: str | None = None,
        pipelining: bool = True,
        chunking: bool = True,
        window: int = 4,
        dependencies: Dependencies | None = None,  # where losing the relay is reported (the worker's health)
    ) -> None:
        if starttls and use_tls:
            raise ValueError("choose either starttls (upgrade) or use_tls (implicit TLS), not both")
        self.host, self.port, self.mail_from = host, port, mail_from
        self._mail_from = b"MAIL FROM:" + envelope_address(mail_from)
        self.max_batch = max_batch
        self._pipelining = pipelining  # used only where the relay advertises it (adapters.email.smtp_pipelining)
        self._chunking = chunking and pipelining  # likewise (adapters.email.smtp_chunking)
        self._window = max(1, window)  # messages a chunking session has written before the first is answered
        self._username = username
        self._password = password.get_secret_value() if hasattr(password, "get_secret_value") else password
        self._starttls, self._use_tls, self._timeout = starttls, use_tls, timeout
        # The relay's certificate and name are always checked; a CA file only says whom to trust. Loaded here, so a
        # missing or unreadable one stops the worker at start, not the first batch.
        self._tls_context = _trusting(ca_file) if ca_file is not None else None
        # socket.getfqdn() (aiosmtplib's default EHLO name) can block on a DNS lookup.
        self._local_hostname = local_hostname or socket.gethostname() or "localhost"
        self._dependencies = dependencies
        if dependencies is not None:
            dependencies.track(SMTP_RELAY)
        self._slots: list[aiosmtplib.SMTP | None] = [None] * max(1, connections)
        self._free = FairLeases(len(self._slots))  # sessions no batch is using, in the order batches asked
        self._unreachable: str | None = None  # why the last session could not be opened, until one opens
        self._held = False  # the relay refused a session beyond those open, and the pool has not been full since
        self._opening = 0  # sessions being opened now (connect, TLS, AUTH, EHLO)
        # Why the relay refuses this worker's mail, and a learner's address it refused, until it takes a message
        # (or takes that learner from a new session, asked while health says it is lost: ``recheck``).
        self._refusal: tuple[str, str] | None = None
        # Sessions opened before the relay refused the worker: each is reopened before its next use, since a relay
        # keeps a session's terms until it ends (Postfix applies a mended main.cf to new sessions only).
        self._renew: set[int] = set()
        # Sessions the relay has taken a message on: relaying denied on one of them is about that learner's domain.
        self._relaying: weakref.WeakSet[aiosmtplib.SMTP] = weakref.WeakSet()
        self._relayed_to: str | None = None  # the last learner's address the relay took a message to

    async def start(self) -> None:
        """Open every session now so a wrong host or password shows at start-up, not on the first batch."""
        async def open_into(slot: int) -> None:
            smtp = await self._open()  # in its slot at once: a refusal after it sees the relay has taken one
            if self._slots[slot] is None:
                self._slots[slot] = smtp
            else:  # started twice: keep the session already there
                smtp.close()

        opened = await asyncio.gather(*(open_into(slot) for slot in range(len(self._slots))), return_exceptions=True)
        errors = [o for o in opened if isinstance(o, BaseException)]
        if len(errors) == len(self._slots):
            raise ProviderUnavailable(f"smtp {self.host}:{self.port}: {errors[0]}")

    async def stop(self) -> None:
        """Say QUIT on every open session."""
        for i in range(len(self._slots)):
            await self._drop(i, polite=True)

    async def send_batch(
        self, messages: Sequence[OutgoingEmail], on_result: OnEachResult | None = None
    ) -> list[SendResult]:
        """One SMTP transaction per message, spread over the pool; results in the order of ``messages``.

        Messages the relay never had (it could not be reached, or refused this worker) are UNREACHED, or, if none
        of the batch has a result, ProviderUnavailable: the sends wait for the relay, spending no attempt."""
        batch = _Batch(messages, on_result, self._takes_mail)
        unreachable: list[str] = []

        async def work() -> None:
            # Lease a session so concurrent batches never interleave on one connection.
            slot = await self._free.take()
            try:
                while batch.pending:
                    smtp = await self._session(slot)
                    if self._streams(smtp):
                        await self._stream(slot, smtp, batch)
                    else:
                        await self._one_at_a_time(slot, batch)
            except _Unreachable as exc:  # leave the messages to a session that works; this one gives up
                unreachable.append(str(exc))
            finally:
                self._free.give(slot)

        async with asyncio.TaskGroup() as group:  # a bug in one worker cancels the others
            for _ in range(min(len(self._slots), len(messages))):
                group.create_task(work())
        if batch.denied:
            await self._judge_denials(batch, unreachable)
        if batch.pending:
            reason = f"smtp {self.host}:{self.port}: {unreachable[-1]}"
            if all(r is None for r in batch.results):
                raise ProviderUnavailable(reason)
            for index in batch.pending:  # never handed to the relay: the outage must not cost them an attempt
                batch.results[index] = SendResult(messages[index].key, Outcome.UNREACHED, error=one_line(reason))
        return [r for r in batch.results if r is not None]

    async def _judge_denials(self, batch: _Batch, unreachable: list[str]) -> None:
        """The learners whose relaying a session denied before it had taken a message. Each one's own refusal if
        that session took a message since (the relay serves some domains only). Else a new session asks the relay
        (``_relays_to``) about a few of them and about the last address it took mail to:
        - one of them taken: the denying sessions had other terms than new ones get (opened before the relay's
          settings were mended, or a pool of relays of which one does not trust the worker): they are tried again,
          on new sessions, spending no attempt;
        - only the last address taken: the relay relays for the worker, not to these learners: their own refusal;
        - neither: the relay refusing this worker, waited for like an outage."""
        own, held = [], []
        for index, (session, _, _) in sorted(batch.denied.items()):
            if session in self._relaying:
                own.append(index)
            else:
                held.append(index)
                self._renew.update(slot for slot, smtp in enumerate(self._slots) if smtp is session)
        if held:
            sample = [batch.messages[index].to_address for index in held[:_SAMPLE]]
            known = self._relayed_to
            answers = await self._relays_to([*sample, *([known] if known is not None else [])])
            _, code, text = batch.denied[held[0]]
            if any(answers.get(address) for address in sample):
                unreachable.append(f"relaying denied ({code}) on sessions older than the relay's terms for new ones")
                batch.pending.extend(held)
            elif known is not None and answers.get(known):
                own += held
            else:
                unreachable.append(str(self._refuses_worker(batch.messages[held[0]], code, text)))
                batch.pending.extend(held)
        for index in sorted(own):
            _, code, text = batch.denied[index]
            outcome, reply = classify_reply(code, text), one_line(f"{code} {text}")
            await batch.settle(index, SendResult(batch.messages[index].key, outcome, error=reply))

    async def _relays_to(self, addresses: list[str]) -> dict[str, bool]:
        """Which of ``addresses`` a new session may send to (``_ask``), then QUIT. Empty if the session cannot be
        opened or MAIL is refused; what was answered before the session went stands."""
        try:
            smtp = await self._connect()
        except _Unreachable:
            return {}
        answers: dict[str, bool] = {}
        try:
            await self._ask(smtp, addresses, answers)
        except (OSError, aiosmtplib.SMTPException, ValueError):
            pass  # the session went, or an address cannot be written
        finally:
            await _quit(smtp)
        return answers

    async def _one_at_a_time(self, slot: int, batch: _Batch) -> None:
        """Send the batch's pending messages on the session in ``slot`` one at a time (``_send_on``), until none is
        left; _Unreachable if the session is lost and cannot be opened again, or the relay refuses this worker (the
        message it was on back in ``pending``)."""
        pending = batch.pending
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
                    result, ahead = await self._send_on(slot, batch, index, early)
                except _Unreachable:
                    pending.appendleft(index)
                    raise
                settled = ahead is None
                if result is not None:
                    await batch.settle(index, result)
        finally:
            if not settled:  # cancelled, or a bug, mid-transaction
                self._discard(slot)
                if ahead is not None:  # its content never went out: it was not sent
                    pending.appendleft(ahead.at)

    async def _send_on(self, slot: int, batch: _Batch, index: int,
                       early: _Envelope | None) -> tuple[SendResult | None, _Ahead | None]:
        """The batch's message ``index`` on the leased session ``slot`` (reopened once if it was dropped); ``early``:
        its envelope, already written with the previous message's content. With the result (None: relaying denied
        on a session that has taken no message yet, judged with the batch) comes the next pending message if its
        envelope went out in the same write as this one's content (RFC 2920 3.1), else None: on a refusal of this
        content the server goes on to the next envelope; on a lost session it goes back to ``pending``, never
        having been sent."""
        messages, pending = batch.messages, batch.pending
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
                                                then=partial(self._follow, smtp, batch, taken))
            except aiosmtplib.SMTPResponseException as exc:  # MAIL FROM, RCPT TO, DATA or the content refused
                command = _refused_command(exc)
                if refuses_worker(command, exc.code, exc.message):
                    if taken:  # its content never went out
                        pending.appendleft(taken[0].at)
                    await self._drop(slot, polite=True)
                    raise self._refuses_worker(msg, exc.code, exc.message) from None
                if denies_relaying(command, exc.code, exc.message) and smtp not in self._relaying:
                    batch.denied[index] = (smtp, exc.code, exc.message)
                    return None, self._kept_ahead(slot, taken, pending)
                result = await self._refused(slot, msg, exc.code, exc.message)
                return result, self._kept_ahead(slot, taken, pending)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                # A dropped session (idle timeout, relay restart): reopen and try this message once more.
                await self._drop(slot)
                self._kept_ahead(slot, taken, pending)
                if attempt == 1:
                    continue
                return _lost(msg, exc), None
            except aiosmtplib.SMTPTimeoutError:
                await self._drop(slot)
                self._kept_ahead(slot, taken, pending)
                return _timed_out(msg), None
            except (ValueError, aiosmtplib.SMTPNotSupported) as exc:
                return _unusable(msg, exc), self._kept_ahead(slot, taken, pending)
            self._relayed(smtp, msg)
            return _sent(msg, reply), (taken[0] if taken else None)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns

    def _streams(self, smtp: aiosmtplib.SMTP) -> bool:
        """Whether the session sends with BDAT, a window of messages at a time: the relay pipelines and chunks."""
        return (self._chunking and isinstance(smtp.protocol, ReplyKeepingProtocol)
                and smtp.supports_extension("chunking"))

    async def _stream(self, slot: int, smtp: aiosmtplib.SMTP, batch: _Batch) -> None:
        """Send the batch's pending messages on the session in ``slot`` with BDAT, up to ``window`` of them written
        before the first is answered, each settled as its replies come, in order. Returns once ``pending`` is empty
        and every message written is answered, or once the session is gone; _RefusesWorker once the window is
        answered if the relay refused this worker in it (its message back in ``pending``, the session closed).

        After a refusal nothing more is written until the window is answered.
        A 421, a timeout or a lost session settles only the first unanswered message, as ``_send_on`` does for
        its one: a 421 by its reply, a timeout RETRY, a lost session tried once more (then RETRY); the rest go
        back to ``pending``, their replies never having come."""
        protocol = smtp.protocol
        assert isinstance(protocol, ReplyKeepingProtocol)
        pending = batch.pending
        window: deque[int] = deque()  # written, not yet answered, in order
        again: list[int] = []  # refused only for an earlier message's sake, or the worker's: to be sent again
        refusals: list[_RefusesWorker] = []  # the relay refusing this worker, heard in this window
        refused = False  # a refusal came: write nothing more until the window is answered and the envelope reset
        try:
            while True:
                if not refused:
                    await self._fill(smtp, protocol, batch, window)
                if not window:
                    break
                replies = await self._replies(slot, protocol, batch, window)
                if replies is None:
                    break
                index = window.popleft()
                refused = await self._answered(slot, batch, index, replies, refused, again, refusals)
                if refused and not window:  # the next message starts with RSET (smtp_chunking)
                    pending.extendleft(reversed(again))
                    again.clear()
                    refused = False
                    if refusals:
                        await self._drop(slot, polite=True)
                        break
        except _Closed:
            pass  # the relay closed the session after a 421; the rest of the window goes back to pending
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError, aiosmtplib.SMTPResponseException) as exc:
            await self._cut_off(slot, batch, window, exc)
        finally:
            if window:  # never answered: not sent by this session, which cannot pair replies any more
                self._discard(slot)
            pending.extendleft(reversed([*again, *window]))
        if refusals:
            raise refusals[0]

    async def _cut_off(self, slot: int, batch: _Batch, window: deque[int], exc: Exception) -> None:
        """The session is gone (or would not reset its envelope): dropped, and reopened by the caller for what is
        left. The window's first message is left to the retry policy if it is cut off for the second time."""
        await self._drop(slot)
        if window:
            index = window[0]
            batch.cut_off[index] += 1
            if batch.cut_off[index] > 1:
                window.popleft()
                await batch.settle(index, _lost(batch.messages[index], exc))

    async def _replies(self, slot: int, protocol: ReplyKeepingProtocol, batch: _Batch,
                       window: deque[int]) -> list[SMTPResponse] | None:
        """The replies to the window's first message; None if they did not come in time: it is then settled as timed
        out, and the session discarded (a reply may still come: the session can no longer pair replies)."""
        try:
            async with asyncio.timeout(self._timeout):
                return await chunked_replies(protocol)
        except TimeoutError:
            self._discard(slot)
            index = window.popleft()
            await batch.settle(index, _timed_out(batch.messages[index]))
            return None

    async def _fill(self, smtp: aiosmtplib.SMTP, protocol: ReplyKeepingProtocol, batch: _Batch,
                    window: deque[int]) -> None:
        """Write the batch's next pending messages, in one write, until ``window`` holds ``self._window`` of them
        (one whose address cannot be written is settled as unusable instead)."""
        transactions = []
        messages, pending = batch.messages, batch.pending
        while pending and len(window) < self._window:
            index = pending.popleft()
            try:
                transactions.append(self._chunked(smtp, messages[index]))
            except ValueError as exc:
                await batch.settle(index, _unusable(messages[index], exc))
                continue
            window.append(index)
        if transactions:
            protocol.write(b"".join(transactions))

    async def _answered(self, slot: int, batch: _Batch, index: int, replies: list[SMTPResponse], refused: bool,
                        again: list[int], refusals: list[_RefusesWorker]) -> bool:
        """Settle the batch's message ``index`` by its replies; whether a refusal has come in this window
        (``refused``: one had before).

        A refusal is the message's own, except a 503 (bad sequence) behind an earlier refusal: the relay was still
        in that transaction, so the message goes to ``again``; and the relay refusing this worker (into
        ``refusals``, the message to ``again``) or denying relaying on a session that has taken no message yet
        (judged with the batch). _Closed after a 421 (the session is dropped)."""
        msg = batch.messages[index]
        refusal = chunked_refusal(replies)
        session = self._slots[slot]
        if refusal is None:
            self._relayed(session, msg)
            await batch.settle(index, _sent(msg, replies[-1].message))
            return refused
        command, reply = refusal
        if command == "RSET":  # the relay closed the session before this message (Exim: too many RSETs): not sent
            batch.cut_off[index] += 1
            if batch.cut_off[index] > 1:  # a second time: settled by that reply, as a 421 to its MAIL would be
                await batch.settle(index, await self._refused(slot, msg, reply.code, reply.message))
            else:
                again.append(index)
                await self._drop(slot)
            raise _Closed
        if refused and reply.code == 503:
            again.append(index)
            return True
        if refuses_worker(command, reply.code, reply.message):
            again.append(index)
            refusals.append(self._refuses_worker(msg, reply.code, reply.message))
            return True
        if denies_relaying(command, reply.code, reply.message) and session is not None \
                and session not in self._relaying:
            batch.denied[index] = (session, reply.code, reply.message)
            return True
        await batch.settle(index, await self._refused(slot, msg, reply.code, reply.message))
        if reply.code == 421:
            raise _Closed
        return True

    def _chunked(self, smtp: aiosmtplib.SMTP, msg: OutgoingEmail) -> bytes:
        """``msg``'s whole transaction for a chunking session; ValueError if its address cannot be written."""
        chunk = chunk_form(msg.raw)
        return chunked_transaction(*self._mail_and_rcpt(smtp, msg, len(chunk)), chunk)

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
        return _Envelope(*self._mail_and_rcpt(smtp, msg, len(wire) - 3), wire)  # the size without the end mark

    def _mail_and_rcpt(self, smtp: aiosmtplib.SMTP, msg: OutgoingEmail, size: int) -> tuple[bytes, bytes]:
        """MAIL FROM (with the message's ``size`` where the relay takes SIZE) and RCPT TO, each with its CRLF;
        ValueError if the address cannot be written."""
        declared = f" SIZE={size}".encode("ascii") if smtp.supports_extension("size") else b""
        return self._mail_from + declared + b"\r\n", b"RCPT TO:" + envelope_address(msg.to_address) + b"\r\n"

    def _follow(self, smtp: aiosmtplib.SMTP, batch: _Batch, taken: list[_Ahead]) -> bytes:
        """The envelope of the batch's next pending message, to follow a content in the same write, that message
        taken off ``pending`` into ``taken``; nothing if the relay does not pipeline or its address cannot be
        written (it stays, and fails on its own turn)."""
        pending = batch.pending
        if not pending or not isinstance(smtp.protocol, ReplyKeepingProtocol):
            return b""
        try:
            envelope = self._envelope(smtp, batch.messages[pending[0]])
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

    def _refuses_worker(self, msg: OutgoingEmail, code: int, text: str) -> _RefusesWorker:
        """The relay refused this worker (``code``, ``text``) at ``msg``: recorded as the relay lost, with why, until it
        takes a message; the sessions open now are each renewed before their next use."""
        reason = self._refusal_reason(code, text)
        self._refusal = (reason, msg.to_address)
        self._renew.update(range(len(self._slots)))
        if self._dependencies is not None:
            self._dependencies.lost(SMTP_RELAY, f"{self.host}:{self.port}: {reason}", recheck=self.recheck)
        return _RefusesWorker(reason)

    def _relayed(self, smtp: aiosmtplib.SMTP | None, msg: OutgoingEmail) -> None:
        """The relay took ``msg`` on ``smtp``: relaying denied on that session is now a learner's own, and
        ``msg``'s address is one to ask about when a new session's terms are in doubt (``_judge_denials``)."""
        if smtp is not None:
            self._relaying.add(smtp)
        self._relayed_to = msg.to_address

    def _refusal_reason(self, code: int, text: str) -> str:
        """The relay's refusal of this worker as health and logs show it: naming no learner."""
        return one_line(f"refuses this worker's mail: {code} {without_addresses(text, sender=self.mail_from)}")

    def _takes_mail(self) -> None:
        """The relay took a message: it no longer refuses this worker, if it did."""
        if self._refusal is not None:
            self._refusal = None
            if self._dependencies is not None:
                self._dependencies.restored(SMTP_RELAY)

    async def _session(self, slot: int) -> aiosmtplib.SMTP:
        """The session in ``slot``, opened if it is not, or if it was open when the relay refused this worker
        (raises _Unreachable if it cannot be)."""
        smtp = self._slots[slot]
        if slot in self._renew:
            self._renew.discard(slot)
            if smtp is not None:
                await self._drop(slot, polite=True)
                smtp = None
        if smtp is None or not smtp.is_connected:
            smtp = self._slots[slot] = await self._open()
        return smtp

    async def _open(self) -> aiosmtplib.SMTP:
        """A greeted session; the relay recorded as lost (with the reason) or back in the process's health.

        A refusal at the greeting while another of the pool's sessions is open, or still opening (the relay answers
        a refusal at once, and a session it takes only after the greeting and EHLO), is the relay's limit of
        sessions per client, not the relay lost; the last of several refused at once, with none open, is."""
        self._opening += 1
        try:
            smtp = await self._connect()
        except _Unreachable as exc:
            if exc.greeted and self._connected() + self._opening > 1:
                self._refused_beyond(exc)
                raise
            self._unreachable = str(exc)
            if self._dependencies is not None:
                self._dependencies.lost(SMTP_RELAY, f"{self.host}:{self.port}: {exc}", recheck=self.recheck)
            raise
        finally:
            self._opening -= 1
        self._unreachable = None
        if self._connected() + 1 >= len(self._slots):
            self._held = False  # this one fills the pool: a later refusal beyond it is said again
        if self._dependencies is not None and self._refusal is None:  # a refusal holds until the relay takes mail
            self._dependencies.restored(SMTP_RELAY)
        return smtp

    def _connected(self) -> int:
        """How many of the pool's sessions are open."""
        return sum(1 for session in self._slots if session is not None and session.is_connected)

    def _refused_beyond(self, exc: _Unreachable) -> None:
        """The relay refused one more session while others of ours are open or opening (a limit of sessions per
        client, such as Postfix's smtpd_client_connection_count_limit, shared with the other workers): not lost,
        and the open ones carry the sends. Said once while it lasts."""
        if not self._held:
            log.warning("smtp relay %s:%d refused a session beyond those the worker holds (%s): they carry the "
                        "sends; give each worker fewer connections, or raise the relay's limit", self.host,
                        self.port, exc)
        self._held = True

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
            tls_context=self._tls_context,
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
        except aiosmtplib.SMTPConnectResponseError as exc:
            smtp.close()
            raise _Unreachable(one_line(f"{exc.code} {exc.message}"), greeted=True) from None
        except (OSError, aiosmtplib.SMTPException) as exc:
            smtp.close()
            raise _Unreachable(one_line(exc) or type(exc).__name__) from None
        return smtp

    async def recheck(self) -> None:
        """Open a session and QUIT it: whether the relay answers now (health asks while it is lost; an idle worker
        would otherwise say it is lost until its next batch). If it refused this worker, the session also asks it
        about the learner it refused (``_ask``: nothing is sent). Raises ConnectionError with the reason if not; the
        watch that asks (resilience.dependencies.recheck_lost) records the answer."""
        try:
            smtp = await self._connect()
        except _Unreachable as exc:
            raise ConnectionError(f"{self.host}:{self.port}: {exc}") from None
        try:
            if self._refusal is not None:
                refusal = await self._ask(smtp, [self._refusal[1]], {})
                if refusal is not None:
                    raise ConnectionError(f"{self.host}:{self.port}: {refusal}")
                self._refusal = None
        finally:
            await _quit(smtp)

    async def _ask(self, smtp: aiosmtplib.SMTP, addresses: list[str],
                   answers: dict[str, bool]) -> str | None:
        """Whether the relay would take mail from this worker to each of ``addresses`` now: MAIL, a RCPT for each,
        then RSET (nothing is sent). Into ``answers`` (kept as far as the session went): taken, or refused
        permanently for another reason than the worker or relaying (an unknown user): True; refused for the worker
        or relaying: False; a temporary answer says neither. Returns the first refusal of the worker or of
        relaying, in words (``_refusal_reason``); MAIL refused answers for none of them."""
        reply = await smtp.execute_command(self._mail_from)
        if reply.code != 250:
            refused = refuses_worker("MAIL", reply.code, reply.message)
            return self._refusal_reason(reply.code, reply.message) if refused else None
        refusal = None
        for address in addresses:
            reply = await smtp.execute_command(b"RCPT TO:" + envelope_address(address))
            if refuses_worker("RCPT", reply.code, reply.message) or denies_relaying("RCPT", reply.code, reply.message):
                answers[address] = False
                refusal = refusal or self._refusal_reason(reply.code, reply.message)
            elif reply.code in (250, 251) or 500 <= reply.code < 600:
                answers[address] = True
        await smtp.rset()
        return refusal

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
        await _quit(smtp)
