"""Helpers for the email tests: outgoing-message factories and a sleep that records instead of waiting."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from adapters.email.base import OutgoingEmail
from content.email import RenderedEmail, compose_message, message_id_for

MAIL_FROM = "noreply@moodle.example.org"
MAIL_DOMAIN = "moodle.example.org"
NAMES = ["Zoë Ångström", "Иван Петров", "李雷", "Anne O'Neil", "Plain User"]


def address_of(i: int) -> str:
    return f"learner{i}@example.org"


def outgoing(i: int, job_id: str = "job-test", *, name: str | None = None, address: str | None = None) -> OutgoingEmail:
    """A fully composed message for recipient ``i`` of ``job_id``, as the email stream would build it."""
    name = name if name is not None else NAMES[i % len(NAMES)]
    address = address or address_of(i)
    rendered = RenderedEmail(
        subject=f"Reminder for {name}",
        text=f"Dear {name},\nplease finish the course.\n",
        html=f"<p>Dear {name},</p><p>please finish the course.</p>",
    )
    message_id = message_id_for(job_id, i, "offload.test", key=b"test-message-id-key")
    raw = compose_message(
        rendered, from_address=MAIL_FROM, from_name="Moodle", to_address=address, to_name=name, message_id=message_id
    )
    return OutgoingEmail(
        key=str(i), to_address=address, to_name=name, subject=rendered.subject, text=rendered.text,
        html=rendered.html, message_id=message_id, raw=raw,
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released), so connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that takes connections and never answers (no greeting, and once its one-place queue is full
    not even the handshake), like a relay behind a firewall that drops: opening a session times out."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # never accepted
        yield int(s.getsockname()[1])


class RecordingSleep:
    """Stands in for asyncio.sleep in deliver(): keeps the delays it was asked for, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
