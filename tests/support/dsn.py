"""Delivery status notifications (RFC 3464) laid out as Postfix writes them (tests/integration/test_postfix_bounces.py
has a real Postfix write one), for the tests of ``api.webhooks.dsn``; with ``headers_only`` the returned message
is its header alone (``text/rfc822-headers``), as Exim and Postfix with ``bounce_size_limit`` reached return it."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime, make_msgid

_BOUNDARY = "A63D7984093.1796466170/relay.example.org"


def dsn(*recipients: tuple[str, str, str, str], message_id: str | None, queue_id: str | None = "A63D7984093",
        sent_at: datetime, headers_only: bool = False, notice_id: str | None = None) -> bytes:
    """A notification about one returned message whose Message-ID is ``message_id`` (none: no such header), with a
    block per recipient: (address, action, status, diagnostic)."""
    date = format_datetime(sent_at)
    per_message = "Reporting-MTA: dns; relay.example.org\n" + (
        f"X-Postfix-Queue-ID: {queue_id}\n" if queue_id else "") + f"Arrival-Date: {date}\n"
    per_recipient = "".join(
        f"\nFinal-Recipient: rfc822; {address}\nOriginal-Recipient: rfc822;{address}\nAction: {action}\n"
        f"Status: {status}\nRemote-MTA: dns; mx.example.org\nDiagnostic-Code: smtp; {diagnostic}\n"
        for address, action, status, diagnostic in recipients)
    returned_header = (f"From: Moodle <noreply@moodle.example.org>\nTo: <{recipients[0][0]}>\nSubject: Reminder\n"
                       f"Date: {date}\n" + (f"Message-ID: {message_id}\n" if message_id else ""))
    returned = (f"Content-Type: text/rfc822-headers\n\n{returned_header}" if headers_only else
                f"Content-Type: message/rfc822\n\n{returned_header}\nDear learner,\nplease finish the course.\n")
    text = (
        f"Date: {date}\nFrom: Mail Delivery System <MAILER-DAEMON@relay.example.org>\n"
        "Subject: Undelivered Mail Returned to Sender\nTo: noreply@moodle.example.org\nAuto-Submitted: auto-replied\n"
        f"MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{_BOUNDARY}\"\n"
        f"Message-Id: {notice_id or make_msgid(domain='relay.example.org')}\n\n"
        f"This is a MIME-encapsulated message.\n\n--{_BOUNDARY}\nContent-Description: Notification\n"
        "Content-Type: text/plain; charset=utf-8\n\nI'm sorry to have to inform you that your message could not\n"
        f"be delivered to one or more recipients.\n\n--{_BOUNDARY}\nContent-Description: Delivery report\n"
        f"Content-Type: message/delivery-status\n\n{per_message}{per_recipient}\n--{_BOUNDARY}\n"
        f"Content-Description: Undelivered Message\n{returned}\n--{_BOUNDARY}--\n")
    return text.replace("\n", "\r\n").encode()
