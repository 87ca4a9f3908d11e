"""The ingest validator at the API's edge: each bad input gets its code, and generated junk never gets
anything but a refusal (or, for a real job, an acceptance the worker agrees with)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.ingest import NotAJob, check_job
from schemas.intake import validate_request
from security.callback_urls import check_callback_url
from tests.conftest import job_payload

LIMIT = 100_000


def codes(payload: Any) -> set[str]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    result = check_job(body, max_recipients=LIMIT)
    assert result.job is None
    return {p.code for p in result.problems}


def test_a_good_job_is_accepted_without_its_callback_secret():
    result = check_job(json.dumps(job_payload("j", 3, callback_secret="s3cret")).encode(), max_recipients=LIMIT)
    assert result.job is not None and not result.problems
    assert "s3cret" not in result.job.model_dump_json()


def test_not_json_and_nameless_jobs_are_not_jobs():
    with pytest.raises(NotAJob) as info:
        check_job(b"{nope", max_recipients=LIMIT)
    assert info.value.code == "malformed_json"
    with pytest.raises(NotAJob) as info:
        check_job(b'{"type": "email"}', max_recipients=LIMIT)
    assert info.value.code == "missing_job_id"


def _without(key: str) -> dict:
    payload = job_payload("j", 2)
    del payload[key]
    return payload


@pytest.mark.parametrize(("payload", "code"), [
    (job_payload("j", 2, company_id="seven"), "invalid_field"),  # type: ignore[arg-type]
    ({**job_payload("j", 1), "recipients": [{"userid": "abc", "email": "a@example.org"}]}, "invalid_field"),
    (_without("template_id"), "missing_field"),
    (job_payload("j", 2, job_type="fax"), "unknown_job_type"),
    ({**job_payload("j", 1), "recipients": []}, "no_recipients"),
    ({**job_payload("j", 2), "recipients": job_payload("j", 2)["recipients"] * 2}, "duplicate_userids"),
    ({**job_payload("j", 1), "recipients": [{"userid": 1, "email": "a@example.org", "firstname": "Eve\r\nBcc: x"}]},
     "control_characters"),
    (job_payload("j", 1, template_data={"subject": "Hi\nBcc: all@example.org"}), "control_characters"),
    (job_payload("j", 1, template_data={"course_name": "{{ ''.__class__.__mro__ }}"}), "template_injection"),
    (job_payload("j", 1, template_data={"course_name": "{% for x in range(10**9) %}{% endfor %}"}),
     "template_injection"),
])
def test_each_bad_input_has_its_own_code(payload, code):
    assert codes(payload) == {code}


def test_too_many_recipients_is_its_own_code_and_the_limit_is_said():
    result = check_job(json.dumps(job_payload("j", 11)).encode(), max_recipients=10)
    assert [(p.code, p.field) for p in result.problems] == [("too_many_recipients", "recipients")]
    assert "limit of 10" in result.problems[0].message


def test_an_invalid_email_address_is_not_a_job_problem():
    payload = job_payload("j", 2)
    payload["recipients"][0]["email"] = "not an address"
    assert check_job(json.dumps(payload).encode(), max_recipients=LIMIT).job is not None


def test_several_kinds_of_problem_are_all_listed_under_invalid_job():
    payload = job_payload("j", 1, template_data={"a": "{{x}}", "b": "x\ny"})
    result = check_job(json.dumps(payload).encode(), max_recipients=LIMIT)
    assert result.code == "invalid_job" and {p.code for p in result.problems} == {"template_injection",
                                                                                 "control_characters"}


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/cb", "https://10.1.2.3/cb", "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:8080/", "http://[::ffff:192.168.0.1]/", "http://localhost/cb", "http://0.0.0.0/",
    "http://100.64.0.1/", "http://224.0.0.1/",
])
def test_callback_urls_to_inside_addresses_are_refused(url):
    refusal = asyncio.run(check_callback_url(url, allow_private=False))
    assert refusal is not None and refusal.code == "callback_url_forbidden", url


@pytest.mark.parametrize(("url", "code"), [("ftp://93.184.215.14/", "invalid_callback_url"),
                                           ("https://user:pw@93.184.215.14/", "invalid_callback_url"),
                                           ("https://no-such-host.invalid/", "callback_url_unresolvable"),
                                           ("http://[::1/", "invalid_callback_url")])
def test_other_bad_callback_urls(url, code):
    refusal = asyncio.run(check_callback_url(url, allow_private=False))
    assert refusal is not None and refusal.code == code


def test_public_callbacks_pass_and_private_ones_pass_when_allowed():
    assert asyncio.run(check_callback_url("https://93.184.215.14/cb", allow_private=False)) is None
    assert asyncio.run(check_callback_url("http://127.0.0.1:8080/cb", allow_private=True)) is None


# --- generated junk -----------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_recipient = st.fixed_dictionaries(
    {"userid": st.one_of(st.integers(-2, 50), st.text(max_size=3)), "email": st.text(max_size=30)},
    optional={"firstname": st.text(max_size=20), "lastname": st.one_of(st.text(max_size=20), st.integers()),
              "extra": _json},
)
_jobish = st.fixed_dictionaries(
    {},
    optional={"job_id": st.one_of(st.text(max_size=20), st.integers()), "type": st.sampled_from(["email",
              "certificate", "fax", ""]), "company_id": st.one_of(st.integers(-1, 9), st.text(max_size=3)),
              "recipients": st.lists(_recipient, max_size=6), "template_id": st.text(max_size=10),
              "template_data": st.dictionaries(st.text(max_size=8), _json, max_size=4),
              "callback_url": st.one_of(st.none(), st.text(max_size=30)), "callback_secret": st.text(max_size=8)},
)


def _outcome(body: bytes) -> None:
    try:
        result = check_job(body, max_recipients=5)
    except NotAJob as exc:
        assert exc.code in {"malformed_json", "missing_job_id"}
        return
    if result.job is None:
        assert result.problems and all(p.code and p.field and p.message for p in result.problems)
    else:
        # What the API accepts, the worker accepts as the same job (its own validation, its own limit).
        worker = validate_request(body, max_recipients=5)
        assert worker.job is not None and worker.job.job_id == result.job.job_id
        assert worker.duplicates_removed == 0
        assert len(result.job.recipients) <= 5


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_jobish)
def test_job_shaped_junk_is_refused_with_problems_or_accepted_as_the_worker_would(payload):
    _outcome(json.dumps(payload).encode())


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), _json.map(lambda v: json.dumps(v).encode())))
def test_arbitrary_bytes_and_json_never_crash_the_validator(body):
    _outcome(body)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40), st.booleans())
def test_the_fast_control_character_precheck_never_misses_one(text, ascii_only):
    from api.ingest import _CONTROL, _may_hold_control_characters

    if _CONTROL.search(text):
        assert _may_hold_control_characters(json.dumps({"name": text}, ensure_ascii=ascii_only).encode())
