"""Provider webhooks: what SES (through SNS), SendGrid and Mailgun learned after sending, as events.

Nothing is believed before its signature verifies (``signatures``). Each webhook is accepted once, across every
API replica (``security.seen``): SNS by topic + MessageId, SendGrid by what it signed (timestamp + body), Mailgun
by token. A provider's retry after a failure here is let through again. Each provider's payload is read into
``Report``s (``reports``), matched to a job's recipient and published (``service``); unmatched reports are
answered 200 and logged: a retry would not help. ``routes`` holds the handlers and ``setup``.
"""

from api.webhooks.reports import Report, mailgun_reports, sendgrid_reports, ses_reports
from api.webhooks.routes import MAX_WEBHOOK_BYTES, WEBHOOKS, setup
from api.webhooks.service import WebhookService
from api.webhooks.signatures import (
    SNS_HOST,
    Fetch,
    Refused,
    SnsVerifier,
    check_sns_url,
    sns_string_to_sign,
    verify_mailgun,
    verify_sendgrid,
)

__all__ = [
    "MAX_WEBHOOK_BYTES",
    "SNS_HOST",
    "WEBHOOKS",
    "Fetch",
    "Refused",
    "Report",
    "SnsVerifier",
    "WebhookService",
    "check_sns_url",
    "mailgun_reports",
    "sendgrid_reports",
    "ses_reports",
    "setup",
    "sns_string_to_sign",
    "verify_mailgun",
    "verify_sendgrid",
]
