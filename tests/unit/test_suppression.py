"""One-click unsubscribe tokens and headers, the bulk/transactional rule, and the suppression list's checks."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from adapters.email.mailgun import MailgunProvider
from adapters.email.sendgrid import SendGridProvider
from config.settings import Settings
from schemas.events import BatchDispatched, JobRequested, Recipient
from schemas.events.suppression import RecipientUnsubscribed, SuppressionAdded, SuppressionRemoved
from security.unsubscribe import list_unsubscribe_headers, make_token, read_token
from streams.suppressions import SuppressionList, mail_category, scopes_for
from tests.support.email import outgoing

SECRET = b"unsubscribe-secret-for-tests-0123456789"


def test_a_token_names_company_learner_and_list_and_only_we_can_make_one():
    token = make_token(SECRET, 7, 1234, "course_reminder")
    found = read_token(SECRET, token)
    assert found is not None and (found.company_id, found.userid, found.list_id) == (7, 1234, "course_reminder")
    prefix, company, userid, list_id, mac = token.split(".")
    assert prefix == "u1" and len(mac) == 43  # 256 bits
    # Another company, learner or list with the same MAC, another secret, a changed MAC: none is ours.
    assert read_token(SECRET, f"u1.8.{userid}.{list_id}.{mac}") is None
    assert read_token(SECRET, f"u1.{company}.1235.{list_id}.{mac}") is None
    assert read_token(SECRET, f"u1.{company}.{userid}.other_list.{mac}") is None
    assert read_token(b"another-secret-entirely-0123456789", token) is None
    assert read_token(SECRET, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    for junk in ("", "u1", "u1.7.1.x", token + "x", "u1.7.1.LIST.x" + "a" * 42, "٣" * 10, "u1." + "7" * 200):
        assert read_token(SECRET, junk) is None
    with pytest.raises(ValueError):
        make_token(SECRET, 7, 1, "Not A List")


def test_the_two_rfc_8058_headers_put_the_https_link_first_then_the_mailto():
    headers = list_unsubscribe_headers(SECRET, base_url="https://offload.example.org/", mailto="unsub@example.org",
                                       company_id=7, userid=5, list_id="course_reminder")
    token = make_token(SECRET, 7, 5, "course_reminder")
    assert headers == {
        "List-Unsubscribe": f"<https://offload.example.org/u/{token}>, "
                            f"<mailto:unsub@example.org?subject=unsubscribe%20{token}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    no_mailto = list_unsubscribe_headers(SECRET, base_url="https://o.example.org", mailto=None, company_id=7,
                                         userid=5, list_id="x")
    assert no_mailto["List-Unsubscribe"].startswith("<https://o.example.org/u/u1.7.5.x.") and "," not in \
        no_mailto["List-Unsubscribe"]


def _job(**fields) -> JobRequested:
    base = {"job_id": "j", "type": "email", "company_id": 7, "template_id": "course_reminder",
            "recipients": [{"userid": 1, "email": "a@example.org"}]}
    return JobRequested.model_validate({**base, **fields})


def test_course_reminders_are_bulk_certificates_and_password_mail_transactional_unless_the_job_says():
    settings = Settings()
    assert mail_category(_job(), settings) == ("bulk", "course_reminder")
    assert mail_category(_job(list_id="weekly_digest"), settings) == ("bulk", "weekly_digest")
    assert mail_category(_job(template_id="password_reset"), settings) == ("transactional", None)
    assert mail_category(_job(template_id="certificate_ready"), settings) == ("transactional", None)
    assert mail_category(_job(type="certificate", template_id="course_completion"), settings) == (
        "transactional", None)
    assert mail_category(_job(category="transactional"), settings) == ("transactional", None)
    assert mail_category(_job(template_id="password_reset", category="bulk"), settings) == ("bulk", "password_reset")
    assert mail_category(_job(), Settings(transactional_templates=["course_reminder"])) == ("transactional", None)


def test_an_entry_stops_only_the_mail_of_its_scope_and_a_bounce_only_its_address():
    table: dict = {}
    suppressions = SuppressionList(table)
    learner = Recipient(userid=5, email="Five@Example.org")
    bulk, other_list, transactional = (scopes_for("bulk", "course_reminder"), scopes_for("bulk", "news"),
                                       scopes_for("transactional", None))
    assert suppressions.find(7, learner, bulk) is None
    suppressions.apply(RecipientUnsubscribed(company_id=7, userid=5, list_id="course_reminder", method="one-click"))
    assert suppressions.find(7, learner, bulk)[0] == "course_reminder"
    assert suppressions.find(7, learner, other_list) is None and suppressions.find(7, learner, transactional) is None
    assert suppressions.find(8, learner, bulk) is None  # per company
    suppressions.apply(SuppressionAdded(company_id=7, userid=5, scope="bulk", source="complaint", reason="spam"))
    assert suppressions.find(7, learner, other_list)[1].source == "complaint"
    assert suppressions.find(7, learner, transactional) is None
    suppressions.apply(SuppressionAdded(company_id=7, userid=5, source="bounce", reason="550",
                                        email="five@example.org"))
    assert suppressions.find(7, learner, transactional)[1].source == "bounce"
    moved = Recipient(userid=5, email="five.new@example.org")  # the learner's address changed since it bounced
    assert suppressions.find(7, moved, transactional) is None
    suppressions.apply(SuppressionRemoved(company_id=7, userid=5, scope="*", reason="fixed"))
    suppressions.apply(SuppressionRemoved(company_id=7, userid=5, scope="*", reason="again: no error"))
    assert suppressions.find(7, learner, transactional) is None and "7:5:*" not in table
    assert json.loads(json.dumps(table))  # the table holds plain JSON


def test_the_batch_carries_the_category_and_an_unknown_field_in_the_table_fails_loudly():
    batch = BatchDispatched(job_id="j", batch_no=0, batch_count=1, type="email", company_id=7, route="local",
                            provider="smtp", template_id="course_reminder", recipients=[], category="bulk",
                            list_id="course_reminder")
    assert BatchDispatched.model_validate_json(batch.model_dump_json()).list_id == "course_reminder"
    with pytest.raises(ValueError, match="unknown field"):
        SuppressionList({"7:5:*": {"source": "manual", "reason": "r", "email": None, "sorce": "x"}}).find(
            7, Recipient(userid=5, email="a@example.org"), ("*",))


def test_sendgrid_and_mailgun_carry_each_learners_list_unsubscribe_headers():
    headers = (("List-Unsubscribe", "<https://o.example.org/u/T1>"), ("List-Unsubscribe-Post",
                                                                      "List-Unsubscribe=One-Click"))
    first = replace(outgoing(1), headers=headers)
    plain = outgoing(2)
    sendgrid = SendGridProvider(api_key="k", base_url="https://sg.example", mail_from="noreply@example.org")
    personalizations = sendgrid.body([first, plain])["personalizations"]
    assert personalizations[0]["headers"] == {"List-Unsubscribe": "<https://o.example.org/u/T1>",
                                              "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                                              "Message-ID": first.message_id}
    assert personalizations[1]["headers"] == {"Message-ID": plain.message_id}
    mailgun = MailgunProvider(api_key="k", domain="mg.example.org", base_url="https://mg.example",
                              mail_from="noreply@example.org")
    fields = mailgun.fields([first])
    assert ("h:List-Unsubscribe", "%recipient.h0%") in fields
    assert ("h:List-Unsubscribe-Post", "%recipient.h1%") in fields
    variables = json.loads(dict(fields)["recipient-variables"])[first.to_address]
    assert (variables["h0"], variables["h1"]) == ("<https://o.example.org/u/T1>", "List-Unsubscribe=One-Click")
    assert not [name for name, _ in mailgun.fields([plain]) if name.startswith("h:")]
