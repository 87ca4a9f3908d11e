"""Intake validation and batching, the CloudEvents envelope, and the JSON Schema files against the code."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas import generate
from schemas.envelope import UndecodableRecord, decode, encode, header
from schemas.events import BatchDispatched, JobAccepted, JobRequested, Recipient, RecipientSent
from schemas.intake import batch_count, batches, validate_request
from tests.support.jobs import job_payload


def as_bytes(payload) -> bytes:
    return json.dumps(payload).encode()


def test_a_valid_job_passes_and_repeated_userids_are_served_once():
    payload = job_payload("j1", 5)
    payload["recipients"].append(dict(payload["recipients"][0], email="other@example.org"))
    result = validate_request(as_bytes(payload), max_recipients=100)
    assert result.problems == () and result.duplicates_removed == 1
    assert [r.userid for r in result.job.recipients] == [1, 2, 3, 4, 5]
    assert result.job.recipients[0].email == "learner1@example.org"  # the first occurrence wins


def test_every_problem_of_a_malformed_job_is_listed():
    payload = {"job_id": "j2", "type": "fax", "company_id": "x", "recipients": [{"userid": 0}],
               "template_id": "../etc/passwd"}
    result = validate_request(as_bytes(payload), max_recipients=100)
    assert result.job is None and result.job_id == "j2"
    fields = {p.field for p in result.problems}
    assert {"type", "company_id", "recipients.0.userid", "recipients.0.email", "template_id"} <= fields


def test_recipient_limit_is_a_clear_problem():
    result = validate_request(as_bytes(job_payload("j3", 11)), max_recipients=10)
    assert result.job is None
    assert result.problems[0].message == "11 recipients exceeds the limit of 10 per job"


@pytest.mark.parametrize("value", [b"\xff", b"not json", b"[]", json.dumps({"job_id": ""}).encode()])
def test_a_record_that_names_no_job_cannot_be_rejected_either(value):
    with pytest.raises(ValueError):
        validate_request(value, max_recipients=10)


def test_extra_recipient_fields_reach_templates():
    recipient = Recipient(userid=1, email="a@b.org", firstname="A", lastname="B", department="Safety")
    assert recipient.template_fields()["department"] == "Safety"


@pytest.mark.parametrize("n, size, expected", [(0, 200, []), (1, 200, [1]), (200, 200, [200]),
                                               (201, 200, [200, 1]), (450, 200, [200, 200, 50])])
def test_batches_cut_by_size(n, size, expected):
    recipients = [Recipient(userid=i, email=f"u{i}@x.org") for i in range(1, n + 1)]
    cut = list(batches(recipients, size))
    assert [len(b) for b in cut] == expected
    assert batch_count(n, size) == len(expected)
    assert [r.userid for b in cut for r in b] == list(range(1, n + 1))


def test_envelope_round_trip_carries_cloudevents_headers():
    event = RecipientSent(job_id="j", batch_no=0, userid=3, email="a@b.org", provider="smtp", message_id="<x@y>",
                          attempts=1)
    record = encode(event, source="urn:test")
    assert record.key == b"j" and record.topic == "outcomes"
    assert header(record.headers, "ce_specversion") == b"1.0"
    assert header(record.headers, "ce_type") == b"org.manireports.offload.recipient.sent.v1"
    assert header(record.headers, "ce_subject") == b"j"
    assert decode(record.value, record.headers) == event
    assert json.loads(record.value)["userid"] == 3  # a consumer that ignores headers reads plain JSON


def test_batch_key_spreads_one_job_over_partitions():
    batch = BatchDispatched(job_id="j", run=0, batch_no=4, batch_count=9, type="email", company_id=1, route="local",
                            provider="smtp", template_id="t", recipients=[])
    assert encode(batch).key == b"j:0:4"


def test_headerless_job_request_is_read_as_job_requested_and_junk_is_refused():
    raw = as_bytes(job_payload("j4", 1))
    assert isinstance(decode(raw, [], default=JobRequested), JobRequested)
    with pytest.raises(UndecodableRecord):
        decode(raw, [])  # elsewhere a record needs its type
    with pytest.raises(UndecodableRecord):
        decode(b"{}", [("ce_type", b"org.example.unknown.v1")])
    with pytest.raises(UndecodableRecord):
        decode(b'{"job_id": 1}', [("ce_type", JobAccepted.ce_type.encode())])


def test_a_time_without_an_offset_is_refused_when_made_and_when_read():
    # A naive time would reach the projector's binary COPY (timestamptz), which cannot place it, and end it.
    fields = {"job_id": "j", "batch_no": 0, "userid": 3, "email": "a@b.org", "provider": "smtp",
              "message_id": "<x@y>", "attempts": 1}
    with pytest.raises(ValidationError, match="timezone"):
        RecipientSent(**fields, sent_at=datetime(2026, 12, 2, 7, 0))
    record = encode(RecipientSent(**fields), source="urn:test")
    naive = json.dumps({**json.loads(record.value), "sent_at": "2026-12-02T07:00:00"}).encode()
    with pytest.raises(UndecodableRecord, match="sent_at"):
        decode(naive, record.headers)
    aware = json.dumps({**json.loads(record.value), "sent_at": "2026-12-02T09:00:00+02:00"}).encode()
    assert decode(aware, record.headers).sent_at == datetime(2026, 12, 2, 7, 0, tzinfo=UTC)  # type: ignore[attr-defined]


def test_no_secret_field_exists_in_any_event():
    for name, text in generate.rendered().items():
        assert "secret" not in json.loads(text).get("properties", {}), name


def test_committed_json_schemas_match_the_code():
    assert generate.main(["--check"]) == 0, "run `python -m schemas.generate` and commit schemas/json/"
