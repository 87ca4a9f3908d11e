"""Reading a relay's delivery status notification (RFC 3464) into bounce reports: one per failed recipient, matched
to the learner by the returned message's Message-ID or by the relay's queue id; anything else is not a DSN."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.webhooks.dsn import NotDsn, read_dsn
from tests.support.dsn import dsn

NOW = datetime(2026, 12, 5, 10, 30, tzinfo=UTC)
SENT = NOW - timedelta(minutes=3)
OURS = "<827e0550bda7def7e2dbd7bd60288fb662ac28e3@offload.test>"


@pytest.mark.parametrize("headers_only", [False, True], ids=["message-returned", "header-returned"])
def test_a_failed_recipient_is_a_bounce_of_the_returned_message(headers_only: bool) -> None:
    raw = dsn(("learner1@example.org", "failed", "5.1.1", "550 5.1.1 <learner1@example.org>: User unknown"),
              message_id=OURS, sent_at=SENT, headers_only=headers_only, notice_id="<notice-1@relay.example.org>")
    notice = read_dsn(raw, now=NOW)
    (report,) = notice.reports
    assert notice.notice_id == "<notice-1@relay.example.org>"
    assert (report.kind, report.email, report.message_id, report.provider_message_id) == (
        "bounced", "learner1@example.org", OURS, "A63D7984093")
    assert report.permanent and report.occurred_at == SENT
    assert report.detail == "5.1.1 550 5.1.1 <learner1@example.org>: User unknown"
    assert report.provider_event_id == "<notice-1@relay.example.org>/learner1@example.org"


def test_only_failed_recipients_are_reported_and_a_transient_status_is_no_permanent_bounce() -> None:
    raw = dsn(("a@example.org", "failed", "5.7.1", "554 5.7.1 rejected by policy"),
              ("b@example.org", "delayed", "4.4.1", "connect to mx.example.org: Connection timed out"),
              ("c@example.org", "failed", "4.4.7", "delivery time expired"),
              ("d@example.org", "delivered", "2.0.0", "250 ok"),
              message_id=OURS, sent_at=SENT)
    reports = read_dsn(raw, now=NOW).reports
    assert [(r.email, r.permanent) for r in reports] == [("a@example.org", True), ("c@example.org", False)]


def test_without_the_returned_header_the_relays_queue_id_still_names_the_message() -> None:
    (report,) = read_dsn(dsn(("learner1@example.org", "failed", "5.1.1", "550 gone"), message_id=None,
                             queue_id="4QXz1Y2ab3", sent_at=SENT), now=NOW).reports
    assert (report.message_id, report.provider_message_id) == (None, "4QXz1Y2ab3")


def test_a_notification_without_a_date_it_can_read_is_taken_as_now() -> None:
    raw = dsn(("learner1@example.org", "failed", "5.1.1", "550 gone"), message_id=OURS, sent_at=SENT)
    raw = raw.replace(b"Arrival-Date: ", b"Arrival-Date: soon ").replace(b"\nDate: ", b"\nDate: later ")
    (report,) = read_dsn(raw, now=NOW).reports
    assert report.occurred_at == NOW


def test_exims_layout_is_read_the_same() -> None:
    """Exim's bounce as its own test suite shows it: fields in another order, ``rfc822;`` without a blank, no
    per-message date nor queue id, the returned message whole."""
    raw = (
        "Return-path: <>\nX-Failed-Recipients: learner1@example.org\nAuto-Submitted: auto-replied\n"
        "From: Mail Delivery System <Mailer-Daemon@relay.example.org>\nTo: noreply@moodle.example.org\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=NN-eximdsn-MM\nMIME-Version: 1.0\n"
        "Subject: Mail delivery failed: returning message to sender\n"
        "Message-Id: <E1gG1vN-0001Tn-1c@relay.example.org>\nDate: Sat, 05 Dec 2026 10:27:00 +0000\n\n"
        "--NN-eximdsn-MM\nContent-type: text/plain; charset=us-ascii\n\nThis message was created automatically by "
        "mail delivery software.\n\n--NN-eximdsn-MM\nContent-type: message/delivery-status\n\n"
        "Reporting-MTA: dns; relay.example.org\n\nAction: failed\nFinal-Recipient: rfc822;learner1@example.org\n"
        "Status: 5.0.0\nRemote-MTA: dns; mx.example.org\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <learner1@example.org>: Recipient address rejected\n\n"
        "--NN-eximdsn-MM\nContent-type: message/rfc822\n\nReturn-path: <noreply@moodle.example.org>\n"
        f"Subject: Reminder\nMessage-Id: {OURS}\nFrom: Moodle <noreply@moodle.example.org>\n\nDear learner,\n\n"
        "--NN-eximdsn-MM--\n").replace("\n", "\r\n").encode()
    notice = read_dsn(raw, now=NOW)
    (report,) = notice.reports
    assert notice.notice_id == "<E1gG1vN-0001Tn-1c@relay.example.org>"
    assert (report.email, report.message_id, report.provider_message_id, report.permanent) == (
        "learner1@example.org", OURS, None, True)
    assert report.occurred_at == SENT
    assert report.detail == "5.0.0 550 5.1.1 <learner1@example.org>: Recipient address rejected"


@pytest.mark.parametrize("raw", [
    b"From: learner1@example.org\r\nTo: noreply@moodle.example.org\r\nSubject: Re: Reminder\r\n\r\nThanks!\r\n",
    b"From: x@example.org\r\nContent-Type: multipart/report; report-type=disposition-notification; boundary=b\r\n"
    b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nread\r\n--b--\r\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nno status part\r\n--b--\r\n",
    b"",
], ids=["a-reply", "a-read-receipt", "no-status-part", "empty"])
def test_other_mail_to_the_sender_is_not_a_notification(raw: bytes) -> None:
    with pytest.raises(NotDsn):
        read_dsn(raw, now=NOW)
