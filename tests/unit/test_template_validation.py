"""content.validation: the job-wide template check the API and the route agent run before any learner."""

from __future__ import annotations

import pytest

from content.certificates.templates import CertificateTemplateStore
from content.email.templates import TemplateStore
from content.validation import TemplateCheck, refusal_code
from schemas.events import JobRequested


def job(template_id: str = "course_reminder", template_data: dict | None = None, recipients: list | None = None,
        **extra) -> JobRequested:
    people = recipients or [{"userid": i, "email": f"l{i}@example.org", "firstname": "A", "lastname": "B"}
                            for i in range(1, 4)]
    return JobRequested.model_validate({
        "job_id": "j1", "type": extra.pop("type", "email"), "company_id": 7, "recipients": people,
        "template_id": template_id,
        "template_data": {"course_name": "Fire Safety", "due_date": "2026-12-31", "course_url": "https://x.example"}
        if template_data is None else template_data, **extra})


@pytest.fixture(scope="module")
def check(tmp_path_factory) -> TemplateCheck:
    extra = tmp_path_factory.mktemp("email")
    guarded = extra / "guarded"
    guarded.mkdir()
    (guarded / "subject.txt").write_text("Hi {{ firstname }}")
    (guarded / "body.txt").write_text("{% if coupon is defined %}{{ coupon }}{% endif %}{{ total + 1 }}")
    broken = extra / "broken"
    broken.mkdir()
    (broken / "subject.txt").write_text("{% if %}")
    return TemplateCheck(TemplateStore(extra), CertificateTemplateStore())


def test_a_complete_job_has_no_problem(check):
    assert check.problems(job()) == []


def test_an_unknown_template_is_named(check):
    problems = check.problems(job("course_completion_reminder"))
    assert [(p.code, p.field) for p in problems] == [("unknown_template", "template_id")]
    assert "course_completion_reminder" in problems[0].message


def test_every_missing_name_is_listed_once(check):
    problems = check.problems(job(template_data={"due_date": "tomorrow"}))
    assert [p.code for p in problems] == ["template_data_missing"]
    assert problems[0].missing == ("course_name", "course_url")
    assert problems[0].as_json()["missing"] == ["course_name", "course_url"]


def test_a_field_some_recipients_give_is_not_job_wide(check):
    people = [{"userid": 1, "email": "a@example.org", "firstname": "A", "lastname": "B"},
              {"userid": 2, "email": "b@example.org", "firstname": "C", "lastname": "D", "course_url": "https://c"}]
    assert check.problems(job(template_data={"course_name": "X", "due_date": "Y"}, recipients=people)) == []


def test_guarded_optional_values_are_not_reported_but_arithmetic_on_missing_ones_is(check):
    problems = check.problems(job("guarded", template_data={}))
    assert [p.missing for p in problems] == [("total",)]
    assert check.problems(job("guarded", template_data={"total": 3})) == []


def test_a_syntax_error_is_a_broken_template(check):
    assert [p.code for p in check.problems(job("broken"))] == ["template_invalid"]


def test_certificate_jobs_need_a_known_template_and_course_data(check):
    cert = {"type": "certificate"}
    ok = job("course_completion", {"course_name": "X", "completion_date": "2026-11-20"}, **cert)
    assert check.problems(ok) == []
    assert [p.code for p in check.problems(job("nope", {"course_name": "X", "completion_date": "2026-11-20"},
                                               **cert))] == ["unknown_template"]
    missing = check.problems(job("course_completion", {"course_name": "X"}, **cert))
    assert [(p.code, p.missing) for p in missing] == [("template_data_missing", ("completion_date",))]
    notify = check.problems(job("course_completion", {"course_name": "X", "completion_date": "2026-11-20"},
                                notify_template_id="no_such_mail", **cert))
    assert [(p.code, p.field) for p in notify] == [("unknown_template", "notify_template_id")]
    assert refusal_code(missing + notify) == "invalid_job"
