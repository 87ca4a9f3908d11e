"""Delivery status notifications (RFC 3464) that the local relay sends back to the envelope sender when a message it
took could not be delivered after all (the learner's mail server refused it, or it stayed undeliverable until the
relay gave up), read into the webhooks' ``Report`` shape: one per recipient whose action is ``failed``. So the SMTP
route's bounces suppress and pause like the cloud providers' webhook reports.

Every MTA that takes mail for relaying writes them (Postfix, Exim, Sendmail, Exchange): a ``multipart/report``
with ``report-type=delivery-status``, its ``message/delivery-status`` part holding one block of fields about the
message and one per recipient, and the returned message (``message/rfc822``) or its header
(``text/rfc822-headers``), whose Message-ID is ours. Postfix also names its queue id (``X-Postfix-Queue-ID``): the
one it answered the worker ("queued as"), which the learner's ``RecipientSent`` recorded."""

from __future__ import annotations

import email
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.parser import HeaderParser
from email.utils import parsedate_to_datetime

from api.webhooks.reports import Report

_LONGEST_ID = 250  # a Message-ID or queue id as relays write it is well under this
_LONGEST_ADDRESS = 254  # RFC 5321's limit on a path


class NotDsn(ValueError):
    """The message is not a delivery status notification (an auto-reply, a person's answer, spam)."""


@dataclass(frozen=True, slots=True)
class Dsn:
    notice_id: str  # the relay's id of the notification (its Message-ID): delivered again, it is the same one
    reports: list[Report]  # one per recipient the notification says failed


def read_dsn(raw: bytes, *, now: datetime) -> Dsn:
    """What ``raw`` (a whole DSN message as the relay sent it) reports; NotDsn if it is none."""
    notice = email.message_from_bytes(raw, policy=policy.compat32)
    if notice.get_content_type() != "multipart/report" or \
            str(notice.get_param("report-type", "")).lower() != "delivery-status":
        raise NotDsn(f"a {notice.get_content_type()} message, not a delivery status report")
    blocks = next((_blocks(part) for part in notice.walk() if part.get_content_type() == "message/delivery-status"),
                  [])
    if not blocks:
        raise NotDsn("the report has no delivery-status part")
    about_message, *about_recipients = blocks
    queue_id = _field(about_message, "X-Postfix-Queue-ID")
    queue_id = queue_id if queue_id is not None and len(queue_id) <= _LONGEST_ID else None
    message_id = _returned_message_id(notice)
    notice_id = _field(notice, "Message-ID") or ""
    if not notice_id or len(notice_id) > _LONGEST_ID:  # none, or not one a relay writes: the body names it
        notice_id = hashlib.sha256(raw).hexdigest()[:32]
    reports = []
    for block in about_recipients:
        if (_field(block, "Action") or "").lower() != "failed":
            continue  # delayed, delivered, relayed, expanded: not a bounce
        recipient = _address(_field(block, "Final-Recipient") or _field(block, "Original-Recipient"))
        if recipient is None or len(recipient) > _LONGEST_ADDRESS:
            continue
        status = _field(block, "Status") or ""
        diagnostic = _typed(_field(block, "Diagnostic-Code"))
        when = _date(_field(block, "Last-Attempt-Date") or _field(about_message, "Arrival-Date")
                     or _field(notice, "Date"), now)
        reports.append(Report(
            kind="bounced", email=recipient, message_id=message_id, provider_message_id=queue_id,
            provider_event_id=f"{notice_id}/{recipient}", occurred_at=when,
            detail=" ".join(part for part in (status, diagnostic) if part) or None,
            permanent=not status.startswith("4")))  # RFC 3463: 4.x.x persistent transient; 5.x.x permanent
    return Dsn(notice_id, reports)


def _blocks(part: Message) -> list[Message]:
    """A delivery-status part's blocks of fields (the message's, then each recipient's), as the parser read them."""
    payload = part.get_payload()
    return [block for block in payload if isinstance(block, Message)] if isinstance(payload, list) else []


def _field(block: Message, name: str) -> str | None:
    value = block.get(name)
    if value is None:
        return None
    return " ".join(str(value).split()) or None  # folded lines unfolded, runs of blanks as one


def _typed(value: str | None) -> str | None:
    """A DSN field's value without its type (``rfc822; …``, ``smtp; …``, ``dns; …``)."""
    if value is None:
        return None
    kind, semicolon, rest = value.partition(";")
    return rest.strip() if semicolon and " " not in kind.strip() else value


def _address(value: str | None) -> str | None:
    address = _typed(value)
    if address is None:
        return None
    address = address.strip().strip("<>").strip()
    return address if "@" in address else None


def _returned_message_id(notice: Message) -> str | None:
    """The Message-ID of the message the notification returns, or of its header: ours, if it is about our mail."""
    for part in notice.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            returned = part.get_payload()
            if isinstance(returned, list) and returned and isinstance(returned[0], Message):
                return _field(returned[0], "Message-ID")
        elif kind == "text/rfc822-headers":
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                return _field(HeaderParser().parsestr(text.decode("utf-8", "replace")), "Message-ID")
    return None


def _date(value: str | None, now: datetime) -> datetime:
    """When the relay says it happened; now if it does not say in a form that can be read."""
    if value is None:
        return now
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return now
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
