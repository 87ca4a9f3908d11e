"""What the tests of a real relay (Postfix: tests/support/postfix.py; Exim: tests/support/exim.py) share: its
greeting once it listens, the messages it passed on to the sink, the relay taking the worker's mail again once
mended, and the bounce pipe (clients/relay/offload-bounces) installed as a site installs it."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adapters.email.smtp import SmtpProvider
from devtools.devmail import DevMailSink, ReceivedMessage
from resilience.dependencies import Dependencies
from tests.support.email import MAIL_FROM
from tests.support.observe import wait_for

REPO = Path(__file__).resolve().parents[2]


def greeting(port: int, deadline: float, *, wrapped: bool = False) -> str:
    """The relay's greeting on 127.0.0.1:``port``, asked until ``deadline`` (time.monotonic()); ``wrapped``: on
    implicit TLS (Postfix's smtpd_tls_wrappermode), whose certificate this probe does not check."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as plain, \
                    (probe.wrap_socket(plain) if wrapped else plain) as s:
                said = s.recv(512).decode(errors="replace")
                s.sendall(b"QUIT\r\n")
                return said
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def installed_pipe(token: str, user: str) -> Iterator[tuple[Path, Path]]:
    """clients/relay/offload-bounces and its header file (``Authorization: Bearer token``, owned by ``user``, the
    pipe's, and readable by it only), in a new directory the relay's pipe can reach, as docs/suppression.md has a
    site put them; removed afterwards. Yields (script, header)."""
    directory = Path(tempfile.mkdtemp(prefix="offload-bounce-pipe-"))
    directory.chmod(0o755)
    try:
        script = directory / "offload-bounces"
        shutil.copyfile(REPO / "clients" / "relay" / "offload-bounces", script)
        script.chmod(0o755)
        header = directory / "offload-bounces.header"
        header.write_text(f"Authorization: Bearer {token}\n")
        shutil.chown(header, user)
        header.chmod(0o400)
        yield script, header
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def watched_provider(port: int, **options: Any) -> tuple[SmtpProvider, Dependencies]:
    """The SMTP adapter for the relay on 127.0.0.1:``port`` (sender MAIL_FROM, 2 sessions, 10 s unless ``options``
    say otherwise), with the dependency record health shows it through."""
    deps = Dependencies()
    provider = SmtpProvider("127.0.0.1", port, mail_from=MAIL_FROM, **{"connections": 2, "timeout": 10, **options},
                            dependencies=deps)
    return provider, deps


def wait_relayed(sink: DevMailSink, learners: int) -> dict[str, list[ReceivedMessage]]:
    """What the sink got from the relay, by recipient, once ``learners`` have theirs (a relay passes mail on in the
    background, after it answered the worker)."""
    wait_for(lambda: len(sink.recipient_counts()) >= learners, timeout=90,
             what=f"{learners} learners' messages relayed")
    return sink.by_recipient()


async def until_mended(provider: SmtpProvider) -> None:
    """Until the relay takes mail from the worker again, as health's watch asks it (``recheck``): a relay applies
    its mended settings to the sessions it opens from then on."""
    async def asked() -> bool:
        try:
            await provider.recheck()
        except ConnectionError:
            return False
        return True

    deadline = asyncio.get_running_loop().time() + 60
    while not await asked():
        assert asyncio.get_running_loop().time() < deadline, "the mended relay still refuses the worker"
        await asyncio.sleep(0.2)
