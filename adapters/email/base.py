"""The contract between the email stream and every email provider (SMTP, SES, SendGrid, Mailgun)."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """One personalised message, already composed, ready for any provider."""

    key: str  # recipient key within the batch (the userid as a string)
    to_address: str
    to_name: str
    subject: str
    text: str
    html: str
    message_id: str  # deterministic "<...@domain>"
    raw: bytes  # the complete message from compose_message
    # Extra headers already in ``raw`` (e.g. List-Unsubscribe), for the providers whose API is given the parts
    # instead of the raw message (SendGrid, Mailgun).
    headers: tuple[tuple[str, str], ...] = ()


class Outcome(enum.Enum):
    """What a provider said about one message."""

    SENT = "sent"
    RETRY = "retry"  # transient for this message: try it again later
    THROTTLED = "throttled"  # the provider asks us to slow down: back-pressure, not a failure
    FAILED = "failed"  # permanent: retrying will not help
    UNREACHED = "unreached"  # never sent: the provider went away before this message's turn (no attempt spent)


@dataclass(frozen=True, slots=True)
class SendResult:
    """A provider's answer for one message of a batch."""

    key: str
    outcome: Outcome
    provider_message_id: str | None = None
    error: str | None = None  # short, human readable, never a secret


class ProviderUnavailable(Exception):
    """The whole provider cannot be reached or refuses every call (connection refused, DNS, auth)."""


# Told each message's result (by its index in the batch) as soon as the provider has it, so the stream can
# record a send before the rest of the batch is done: a crash then re-sends as little as possible.
OnEachResult = Callable[[int, SendResult], Awaitable[None] | None]


async def report(on_result: OnEachResult | None, index: int, result: SendResult) -> None:
    if on_result is not None:
        outcome = on_result(index, result)
        if inspect.isawaitable(outcome):
            await outcome


class EmailProvider(Protocol):
    """Sends batches of pre-composed messages; one result per message, in the order given."""

    name: str  # "smtp" | "ses" | "sendgrid" | "mailgun"
    max_batch: int  # messages per send_batch call it handles well (SendGrid/Mailgun: 1000)

    async def start(self) -> None: ...

    async def send_batch(
        self, messages: Sequence[OutgoingEmail], on_result: OnEachResult | None = None
    ) -> list[SendResult]: ...

    async def stop(self) -> None: ...
