"""A development SMTP sink (like MailHog): accepts every message, records it, and can inject failures.

Tests use it in-process (``DevMailSink``); the dev stack runs it standalone with
``python -m devtools.devmail --host 127.0.0.1 --port 2525 --spool DIR``, and other processes count what
arrived by reading ``DIR/received.jsonl``. The handler does little more than a dict append so the sink
keeps up with a few thousand messages a second.
"""

from __future__ import annotations

import argparse
import asyncio
import email.header
import json
import re
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AnyStr, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

_HEADER = {
    name: re.compile(rb"^" + name.encode() + rb":[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
    for name in ("Message-ID", "Subject")
}


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message as the sink received it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes  # empty when the sink runs with keep_messages=False
    message_id: str | None
    received_at: float


@dataclass
class _Injection:
    code: int
    text: str
    times: int | None  # None: every time


def _header(raw: bytes, name: str) -> str | None:
    head = raw.split(b"\r\n\r\n", 1)[0]
    match = _HEADER[name].search(head)
    if match is None:
        return None
    return re.sub(rb"\r?\n[ \t]", b" ", match.group(1)).decode("ascii", "replace").strip()


def _decoded_subject(raw: bytes) -> str | None:
    subject = _header(raw, "Subject")
    if subject and "=?" in subject:
        subject = str(email.header.make_header(email.header.decode_header(subject)))
    return subject


# "<local@domain>" followed by ESMTP parameters: what every real client sends in MAIL FROM / RCPT TO.
_SIMPLE_PATH = re.compile(r"\s*<([^<>\s@\"()\\,;:]{1,64}@[^<>\s@\"()\\,;:]+)>(.*)", re.DOTALL)


_BDAT = re.compile(r"(\d{1,10})(?:[ \t]+(LAST))?[ \t]*", re.IGNORECASE)


class _FastSMTP(SMTP):
    """aiosmtpd's server with a regex fast path for plain addresses, and BDAT (RFC 3030 CHUNKING).

    aiosmtpd parses each MAIL/RCPT path with the email package's header parser, which was about a third
    of the sink's CPU per message; anything unusual still goes through the full parser.

    BDAT is what Postfix (3.0 on) and Exim (4.88 on) offer besides DATA: the content goes as counted chunks, so a
    pipelining client need not wait for DATA's 354, and the server reads it without scanning for the end mark.
    The handler sees a BDAT message exactly as a DATA one (``handle_DATA``).
    """

    _chunks: list[bytes]
    _chunk_error: str | None  # the reply every chunk of this transaction gets once one was refused

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # after a message, RSET, a new MAIL's transaction
        self._chunks, self._chunk_error = [], None

    async def push(self, status: AnyStr) -> None:
        await super().push(status)
        if status[:3] in ("421", b"421"):
            self.hang_up()  # 421: "closing transmission channel" (RFC 5321 3.8)

    def hang_up(self) -> None:
        """Close the session and serve nothing more of what the client sent, as a relay that closes its channel
        does: aiosmtpd would go on with the commands already read, pipelined ones included, until the close lands."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None  # ends aiosmtpd's command loop after the command being served

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_PATH.fullmatch(arg)
        if match is not None:
            return match.group(1), match.group(2)
        return super()._getaddr(arg)

    async def smtp_BDAT(self, arg: str | None) -> None:
        match = _BDAT.fullmatch(arg or "")
        if match is None:  # without its size the chunk cannot be told from the next command
            await self.push("501 5.5.4 Syntax: BDAT count [LAST]; closing")
            self.hang_up()
            return
        size, last = int(match.group(1)), match.group(2) is not None
        try:
            chunk = await self._reader.readexactly(size)  # read whatever the reply: RFC 3030 2
        except asyncio.IncompleteReadError:
            return  # the connection closed mid-chunk: nothing to answer
        assert self.envelope is not None and self.session is not None
        error = self._chunk_error
        if error is None:
            received = sum(map(len, self._chunks)) + size
            if not self.session.host_name:
                error = "503 5.5.1 Error: send HELO first"
            elif self.envelope.mail_from is None:
                error = "503 5.5.1 Error: need MAIL command"
            elif not self.envelope.rcpt_tos:
                error = "554 5.5.1 Error: no valid recipients"
            elif self.data_size_limit and received > self.data_size_limit:
                error = "552 5.3.4 Error: message too large"
        if error is not None:
            self._chunk_error = error  # the rest of this message's chunks get the same reply
            if last:
                self._set_post_data_state()
            await self.push(error)
            return
        self._chunks.append(chunk)
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        self.envelope.content = self.envelope.original_content = b"".join(self._chunks)
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)


class _PortController(Controller):
    """Controller that accepts port 0 and learns the port the OS picked before its readiness probe."""

    def factory(self) -> SMTP:
        return _FastSMTP(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = cast(asyncio.Server, self.server).sockets[0].getsockname()[1]
        super()._trigger_server()


class DevMailSink:
    """An aiosmtpd server in its own thread that records every message it accepts."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keep_messages: bool = True,
        spool_dir: Path | None = None,
        max_records: int | None = None,
        pipelining: bool = True,
        chunking: bool = True,
    ) -> None:
        self.host, self._port = host, port
        # Advertise PIPELINING (RFC 2920) as Postfix and most relays do; aiosmtpd reads commands one line at a time
        # from the stream, so pipelined commands are served in order, but it does not say so itself.
        self.pipelining = pipelining
        self.chunking = chunking  # offer BDAT (RFC 3030), as Postfix and Exim do by default
        self.keep_messages = keep_messages
        self.spool_dir = spool_dir
        self._lock = threading.Lock()
        self._records: deque[ReceivedMessage] = deque(maxlen=max_records)
        self._count = 0
        self._per_recipient: Counter[str] = Counter()
        self._failures: dict[str, _Injection] = {}
        self._throttle: _Injection | None = None
        self._content_refusals: dict[str, _Injection] = {}  # by recipient: answer the content with a refusal
        self._content_drops: dict[str, _Injection] = {}  # by recipient: close the session instead of answering
        self._hold_after: int | None = None  # accept this many messages, then hold the rest until release()
        self._holding = 0  # replies held (hold_after, hold_mail_after), not yet sent
        self._mails = 0  # MAIL commands seen
        self._hold_mail_after: int | None = None  # answer MAIL commands up to this count, hold later ones
        self._spool: Any = None
        self._controller: _PortController | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> DevMailSink:
        if self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            self._spool = open(self.spool_dir / "received.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._controller = _PortController(
            self, hostname=self.host, port=self._port, server_hostname="devmail.local", ready_timeout=10.0
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def __enter__(self) -> DevMailSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("the sink is not running")
        return int(self._controller.port)

    # ---- what arrived ----------------------------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            return self._count

    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._records)

    def by_recipient(self) -> dict[str, list[ReceivedMessage]]:
        """Messages per envelope recipient (lower-cased), in arrival order."""
        grouped: dict[str, list[ReceivedMessage]] = {}
        for record in self.messages():
            for rcpt in record.rcpt_tos:
                grouped.setdefault(rcpt.lower(), []).append(record)
        return grouped

    def recipient_counts(self) -> dict[str, int]:
        """How many messages each recipient received (kept even when messages themselves are not)."""
        with self._lock:
            return dict(self._per_recipient)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._per_recipient.clear()
            self._count = 0

    # ---- failure injection -----------------------------------------------------------------------
    def fail_next(self, address: str, code: int = 451, times: int = 1,
                  text: str = "Temporary failure, try again") -> None:
        """Refuse the next ``times`` RCPT TO for ``address`` with ``code``."""
        with self._lock:
            self._failures[address.lower()] = _Injection(code, text, times)

    def reject(self, address: str, code: int = 550, text: str = "No such user here") -> None:
        """Refuse every RCPT TO for ``address`` with ``code`` (a permanent failure)."""
        with self._lock:
            self._failures[address.lower()] = _Injection(code, text, None)

    def throttle_next(self, times: int, code: int = 421, text: str = "Too many messages, slow down") -> None:
        """Refuse the next ``times`` MAIL FROM commands (any sender) with ``code``."""
        with self._lock:
            self._throttle = _Injection(code, text, times)

    def refuse_content(self, address: str, code: int = 554, times: int = 1,
                       text: str = "Message content rejected") -> None:
        """Answer the content of the next ``times`` messages to ``address`` with ``code`` (DATA itself got 354)."""
        with self._lock:
            self._content_refusals[address.lower()] = _Injection(code, text, times)

    def drop_at_content(self, address: str, times: int = 1) -> None:
        """Close the session instead of answering the content of the next ``times`` messages to ``address``
        (nothing is recorded): a relay that restarts, or a connection cut, just as a message ends."""
        with self._lock:
            self._content_drops[address.lower()] = _Injection(421, "closing", times)

    def hold_after(self, count: int) -> None:
        """Accept ``count`` messages in all, then keep every further DATA waiting until :meth:`release`.

        A test can so stop a sender at an exact point (the middle of a batch, say) however fast the machine is.
        """
        with self._lock:
            self._hold_after = count

    def hold_mail_after(self, count: int) -> None:
        """Answer ``count`` more MAIL commands, then keep every further one (and what the session sent after it)
        waiting until :meth:`release`: a sender stopped with its envelope's replies still to come."""
        with self._lock:
            self._hold_mail_after = self._mails + count

    def release(self) -> None:
        with self._lock:
            self._hold_after = None
            self._hold_mail_after = None

    def holding(self) -> int:
        """How many replies (to a message's content, or to a MAIL) wait for :meth:`release`."""
        with self._lock:
            return self._holding

    async def _wait_while(self, held: Callable[[], bool]) -> None:
        with self._lock:
            self._holding += 1
        try:
            while held():
                await asyncio.sleep(0.01)
        finally:
            with self._lock:
                self._holding -= 1

    def _held(self) -> bool:
        with self._lock:
            return self._hold_after is not None and self._count >= self._hold_after

    @staticmethod
    def _take(injection: _Injection | None) -> str | None:
        if injection is None or injection.times == 0:
            return None
        if injection.times is not None:
            injection.times -= 1
        return f"{injection.code} {injection.text}"

    # ---- aiosmtpd handler hooks (run in the controller's thread) -----------------------------------
    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when no hook is set
        offered = [*(["250-PIPELINING"] if self.pipelining else []), *(["250-CHUNKING"] if self.chunking else [])]
        return [*responses[:-1], *offered, responses[-1]]  # the last line ends the reply ("250 HELP")

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, mail_options: list) -> str:
        with self._lock:
            self._mails += 1
            held = self._hold_mail_after is not None and self._mails > self._hold_mail_after
        if held:
            await self._wait_while(lambda: self._hold_mail_after is not None)
        with self._lock:
            refusal = self._take(self._throttle)
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list) -> str:
        if self._failures:
            with self._lock:
                refusal = self._take(self._failures.get(address.lower()))
            if refusal:
                return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self._content_refusals or self._content_drops:
            with self._lock:
                refusal = next(filter(None, (self._take(self._content_refusals.get(r.lower()))
                                             for r in envelope.rcpt_tos)), None)
                drop = next(filter(None, (self._take(self._content_drops.get(r.lower()))
                                          for r in envelope.rcpt_tos)), None)
            if drop:
                server.hang_up()
                return drop  # never reaches the client: the session is gone
            if refusal:
                return refusal
        if self._held():
            await self._wait_while(self._held)
        raw: bytes = envelope.original_content or envelope.content
        now = time.time()
        message_id = _header(raw, "Message-ID")
        record = ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            raw=raw if self.keep_messages else b"",
            message_id=message_id,
            received_at=now,
        )
        with self._lock:
            self._count += 1
            queue_id = f"DEV{self._count:08d}"
            self._records.append(record)
            self._per_recipient.update(r.lower() for r in envelope.rcpt_tos)
            if self._spool is not None:
                self._spool_record(queue_id, record, raw)
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _spool_record(self, queue_id: str, record: ReceivedMessage, raw: bytes) -> None:
        assert self.spool_dir is not None
        line = {
            "queue_id": queue_id,
            "rcpt": list(record.rcpt_tos),
            "message_id": record.message_id,
            "subject": _decoded_subject(raw),
            "size": len(raw),
            "received_at": record.received_at,
        }
        self._spool.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._spool.flush()  # other processes count lines as they arrive
        if self.keep_messages:
            (self.spool_dir / f"{queue_id}.eml").write_bytes(raw)


def main(argv: list[str] | None = None) -> int:
    """Run the sink until SIGTERM/SIGINT; print one line when it accepts connections."""
    parser = argparse.ArgumentParser(prog="python -m devtools.devmail", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--spool", type=Path, default=None, help="directory for received.jsonl (and .eml files)")
    parser.add_argument("--keep-messages", action="store_true", help="also write one .eml file per message")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # A long-running sink keeps only the latest records in memory; the spool file has them all.
    sink = DevMailSink(args.host, args.port, keep_messages=args.keep_messages, spool_dir=args.spool, max_records=1000)
    sink.start()
    print(f"devmail listening on {args.host}:{sink.port} spool={args.spool}", flush=True)
    try:
        stop.wait()
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
