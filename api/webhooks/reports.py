"""What a provider's webhook says happened to each message, read into one ``Report`` shape per recipient."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Report:
    kind: str  # delivered | bounced | complained
    email: str
    message_id: str | None
    provider_message_id: str | None
    provider_event_id: str
    occurred_at: datetime
    detail: str | None = None
    permanent: bool = True


def _when(value: Any) -> datetime:
    """When the provider says it happened. A report whose time cannot be read (none of the providers documents
    one without it) is kept, as happened now: the bounce or complaint matters more than its exact time."""
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        when = datetime.fromisoformat(str(value))
    except (ValueError, OverflowError, OSError):
        log.warning("a provider report's time %.40r cannot be read: taken as now", value)
        return datetime.now(UTC)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)  # the providers' times are UTC


def ses_reports(notification: dict[str, Any], event_id: str) -> list[Report]:
    kind = str(notification.get("notificationType") or notification.get("eventType") or "")
    mail = notification.get("mail") or {}
    ids = (mail.get("commonHeaders") or {}).get("messageId"), mail.get("messageId")
    if kind == "Delivery":
        d = notification.get("delivery") or {}
        return [Report("delivered", r, *ids, f"{event_id}:{r}", _when(d.get("timestamp")), d.get("smtpResponse"))
                for r in d.get("recipients", [])]
    if kind == "Bounce":
        b = notification.get("bounce") or {}
        return [Report("bounced", r.get("emailAddress", ""), *ids, f"{event_id}:{r.get('emailAddress')}",
                       _when(b.get("timestamp")), r.get("diagnosticCode") or b.get("bounceSubType"),
                       b.get("bounceType") == "Permanent") for r in b.get("bouncedRecipients", [])]
    if kind == "Complaint":
        c = notification.get("complaint") or {}
        return [Report("complained", r.get("emailAddress", ""), *ids, f"{event_id}:{r.get('emailAddress')}",
                       _when(c.get("timestamp")), c.get("complaintFeedbackType"))
                for r in c.get("complainedRecipients", [])]
    return []


_SENDGRID_KINDS = {"delivered": "delivered", "bounce": "bounced", "dropped": "bounced", "spamreport": "complained"}


def sendgrid_reports(events: list[Any]) -> list[Report]:
    out = []
    for e in events:
        if not isinstance(e, dict) or e.get("event") not in _SENDGRID_KINDS:
            continue
        out.append(Report(_SENDGRID_KINDS[e["event"]], str(e.get("email", "")), e.get("smtp-id"),
                          str(e.get("sg_message_id", "")).split(".")[0] or None, str(e.get("sg_event_id", "")),
                          _when(e.get("timestamp")), e.get("reason") or e.get("response"),
                          e.get("type") != "blocked"))
    return out


def mailgun_reports(data: dict[str, Any]) -> list[Report]:
    event = data.get("event")
    headers = (data.get("message") or {}).get("headers") or {}
    message_id = headers.get("message-id")
    common = (str(data.get("recipient", "")), message_id, message_id, str(data.get("id", "")),
              _when(data.get("timestamp")))
    status = data.get("delivery-status") or {}
    if event == "delivered":
        return [Report("delivered", *common, status.get("message"))]
    if event == "failed" and data.get("severity") == "permanent":
        return [Report("bounced", *common, status.get("message") or data.get("reason"), True)]
    if event == "complained":
        return [Report("complained", *common)]
    return []  # temporary failures: Mailgun retries them itself
