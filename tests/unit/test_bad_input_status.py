"""Issue 11 finding 11: bad input is a 4xx with a code, never a 500 and never a record no reader can decode.

JSON nested deeper than the worker allows is refused whole at the API (400 malformed_json) and by the worker's
validation (the record is dead-lettered with the reason), however deep: the API's json.loads used to read up
to ~990 levels while the events are read back by pydantic's JSON parser, which stops at 200.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.ingest import NotAJob, check_job
from schemas.events import JobRequested
from schemas.intake import MAX_JSON_DEPTH, validate_request
from tests.support.jobs import job_payload


def _nested(depth: int, where: str = "template_data") -> bytes:
    """A valid email job whose template_data (or first recipient) holds a list nested ``depth`` deep."""
    job = job_payload("deep-1", 2)
    if where == "template_data":
        job["template_data"]["nested"] = "HOLE"
    else:
        job["recipients"][0]["nested"] = "HOLE"
    return json.dumps(job).encode().replace(b'"HOLE"', b"[" * depth + b"]" * depth)


@pytest.mark.parametrize("depth", [200, 500, 990])
def test_a_job_nested_past_what_pydantic_reads_back_is_a_400_not_an_undecodable_event(depth):
    body = _nested(depth)
    with pytest.raises(ValueError, match="recursion limit"):
        JobRequested.model_validate_json(body)  # what every reader of the event would fail with
    with pytest.raises(NotAJob) as refused:
        check_job(body, max_recipients=10)
    assert refused.value.code == "malformed_json" and "nested more than" in refused.value.message
    with pytest.raises(ValueError, match=f"not JSON: nested more than {MAX_JSON_DEPTH} levels"):
        validate_request(body, max_recipients=10)  # the worker dead-letters it with this reason


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(min_value=1, max_value=400), where=st.sampled_from(["template_data", "recipient"]))
def test_property_the_api_and_the_worker_draw_the_depth_line_in_the_same_place(depth, where):
    body = _nested(depth, where)
    doc_depth = depth + (2 if where == "template_data" else 3)  # {"template_data": {"nested": [...]}}
    try:
        api_ok = check_job(body, max_recipients=10).job is not None
    except NotAJob as exc:
        assert exc.code == "malformed_json"
        api_ok = False
    try:
        worker_ok = validate_request(body, max_recipients=10).job is not None
    except ValueError:
        worker_ok = False
    assert api_ok == worker_ok == (doc_depth <= MAX_JSON_DEPTH), (depth, where)
    if api_ok:
        JobRequested.model_validate_json(body)  # and what is accepted reads back


@pytest.mark.parametrize("value", ["9" * 5000, "²", "١٢", "-1", "1e3", ""])
def test_ui_page_numbers_that_are_not_small_ascii_integers_fall_back_to_the_default(value):
    from aiohttp.test_utils import make_mocked_request

    from api.ui.state import int_param

    request = make_mocked_request("GET", f"/ui/?page={quote(value)}")
    assert int_param(request, "page", 1, high=10**6) == 1  # int("9" * 5000) raised ValueError: a 500


def test_ui_page_numbers_within_range_are_read():
    from aiohttp.test_utils import make_mocked_request

    from api.ui.state import int_param

    assert int_param(make_mocked_request("GET", "/ui/?page=42"), "page", 1, high=10**6) == 42
    assert int_param(make_mocked_request("GET", "/ui/?page=1000001"), "page", 1, high=10**6) == 1


def test_template_sample_data_nested_thousands_deep_in_the_ui_form_is_a_problem_not_a_500():
    from multidict import MultiDict

    from api.ui.template_pages import _draft_body

    deep = "[" * 4000 + "]" * 4000  # 8,000 bytes: within the UI form limit (8 KiB by default)
    _, problems = _draft_body(MultiDict({"template_id": "welcome", "subject": "Hi", "sample_data": deep}))
    assert {"field": "sample_data", "message": "sample data must be a JSON object"} in problems
