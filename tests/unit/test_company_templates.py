"""Company templates without a broker: the publish check, the job check with a company version or inline
content, and the rules by which the worker's table (and the read model) follow publications and retirements."""

from __future__ import annotations

from typing import Any

import pytest

from content.certificates.templates import CertificateTemplateStore
from content.email.preview import check_template
from content.email.sources import content_digest, source_problems, variables_of
from content.email.templates import EmailRenderer, EmailTemplate, TemplateStore
from content.validation import TemplateCheck
from schemas.envelope import encode
from schemas.events import BatchDispatched, JobRequested, Recipient, TemplatePublished, TemplateRetired
from streams.templates import CompanyTemplates, UnknownTemplateVersion

LEARNER = {"userid": 1, "email": "a@example.org", "firstname": "Ada", "lastname": "L"}


def template(subject: str = "Hi {{ firstname }}", text: str = "{{ course_name }}", html: str = "") -> EmailTemplate:
    return EmailTemplate(id="course_reminder", subject=subject, text=text, html=html, source="company")


def published(version: int, subject: str = "v{{ firstname }}", company: int = 7) -> TemplatePublished:
    return TemplatePublished(company_id=company, template_id="course_reminder", version=version,
                             subject_template=subject, text="t", sha256=content_digest(subject, "t", ""))


class Table(dict):
    """A plain mapping where the worker has its Faust GlobalTable (same get/setitem contract)."""


def applied(*events: TemplatePublished | TemplateRetired) -> CompanyTemplates:
    templates = CompanyTemplates(Table(), TemplateStore())  # type: ignore[arg-type]
    for event in events:
        templates.apply(event, encode(event).value.decode())
    return templates


def batch(**fields: Any) -> BatchDispatched:
    return BatchDispatched(job_id="j", batch_no=0, batch_count=1, type="email", company_id=7, route="local",
                           provider="smtp", template_id="course_reminder",
                           recipients=[Recipient.model_validate(LEARNER)], **fields)


def test_every_problem_of_a_source_is_listed_with_its_part():
    bad = template(subject="", text="{{ a|safe }}{% if %}", html="{% autoescape false %}x{% endautoescape %}")
    found = {(p.code, p.field) for p in source_problems(bad, max_bytes=1024, field="content")}
    assert found == {("template_invalid", "content.subject"), ("template_invalid", "content.text"),
                     ("template_unsafe", "content.html")}
    assert [p.code for p in source_problems(template(text="x" * 2000), max_bytes=1024)] == ["template_too_large"]
    assert [p.field for p in source_problems(template(text=" ", html=""))] == ["text"]  # no body at all


def test_variables_are_what_the_template_reads_beyond_the_learner():
    assert variables_of(template(text="{{ firstname }} {{ due }} {{ site|default('x') }}")) == ["due", "site"]


def test_undeclared_names_and_names_the_sample_lacks_are_problems_and_a_clean_one_renders_escaped():
    undeclared = check_template(template(text="{{ course_name }} {{ oops }}"), declared=["course_name"])
    assert [(p.code, p.missing) for p in undeclared.problems] == [("undefined_variable", ("oops",))]
    short = check_template(template(), sample_data={})
    assert [(p.field, p.missing) for p in short.problems] == [("sample_data", ("course_name",))]
    good = check_template(template(html="<b>{{ course_name }}</b>"), sample_data={"course_name": "<i>"})
    assert good.problems == [] and good.rendered is not None
    assert good.rendered.html == "<b>&lt;i&gt;</b>" and good.rendered.text == "<i>"
    derived = check_template(template())
    assert derived.sample_kind == "derived" and derived.rendered is not None
    assert derived.rendered.text == "[course_name]"


def test_the_sandbox_refuses_python_internals_at_publish():
    report = check_template(template(subject="{{ firstname.__class__.__mro__ }}"))
    assert [p.code for p in report.problems] == ["template_unsafe"]


def job(**fields: Any) -> JobRequested:
    return JobRequested.model_validate({"job_id": "j", "type": "email", "company_id": 7, "recipients": [LEARNER],
                                        "template_id": "course_reminder", **fields})


@pytest.fixture(scope="module")
def check() -> TemplateCheck:
    return TemplateCheck(TemplateStore(), CertificateTemplateStore())


def test_a_job_is_checked_against_the_company_version_or_its_inline_content(check):
    # The built-in course_reminder needs course_name, due_date and course_url; the company's needs only one.
    own = template(text="{{ course_name }}")
    assert check.problems(job(template_data={"course_name": "C"}), email_template=own) == []
    assert [p.code for p in check.problems(job(template_data={"course_name": "C"}))] == ["template_data_missing"]
    inline = {"subject": "Hi {{ firstname }}", "text": "{{ n }}"}
    assert [p.missing for p in check.problems(job(content=inline))] == [("n",)]
    assert check.problems(job(content=inline, template_data={"n": 1})) == []
    unsafe = check.problems(job(content={"subject": "x", "html": "{{ n|safe }}"}, template_data={"n": 1}))
    assert [(p.code, p.field) for p in unsafe] == [("template_unsafe", "content.html")]
    big = check.problems(job(content={"subject": "x", "text": "y" * 5000}), max_bytes=4096)
    assert [p.code for p in big] == ["template_too_large"]


def test_the_table_follows_log_order_and_keeps_every_version():
    templates = applied(published(1), published(2), published(1))  # v1 again (redelivery) changes nothing
    latest = templates.latest(7, "course_reminder")
    assert latest is not None and latest.version == 2
    assert templates.latest(8, "course_reminder") is None  # another company: the built-in one
    retired = applied(published(1), published(2), TemplateRetired(company_id=7, template_id="course_reminder",
                                                                   version=2))
    assert retired.latest(7, "course_reminder") is None
    old = retired.version(7, "course_reminder", 1)
    assert old is not None and old.subject_template == "v{{ firstname }}"  # a job pinned to v1 still renders it
    revived = applied(published(1), TemplateRetired(company_id=7, template_id="course_reminder", version=1),
                      published(2))
    revived_latest = revived.latest(7, "course_reminder")
    assert revived_latest is not None and revived_latest.version == 2
    # A retirement of an older version does not retire a newer one published meanwhile.
    kept = applied(published(1), published(2), TemplateRetired(company_id=7, template_id="course_reminder",
                                                                version=1))
    assert kept.latest(7, "course_reminder") is not None


def test_a_batch_renders_the_version_it_was_dispatched_with_not_the_latest():
    templates = applied(published(1, "one {{ firstname }}"), published(2, "two {{ firstname }}"))
    pinned = templates.for_batch(batch(template_source="company", template_version=1))
    assert EmailRenderer(TemplateStore()).render_template(pinned, LEARNER, {}).subject == "one Ada"
    with pytest.raises(UnknownTemplateVersion):
        templates.for_batch(batch(template_source="company", template_version=3))
    assert templates.for_batch(batch()).source == "builtin"  # records from before templates: built-in
    resolved = templates.for_job(job())
    assert resolved is not None and (resolved.source, resolved.version) == ("company", 2)
    assert templates.for_job(job(company_id=8)) is None
    inline = templates.for_job(job(content={"subject": "s", "text": "t"}))
    assert inline is not None and inline.source == "inline"


def test_declared_names_must_be_names_and_a_huge_source_is_not_parsed():
    report = check_template(template(), declared=["course_name", "due date", "{{x}}"])
    assert [(p.code, p.missing) for p in report.problems] == [("undefined_variable", ("due date", "{{x}}"))]
    huge = source_problems(template(text="{% if %}" * 2000), max_bytes=1024)
    assert [p.code for p in huge] == ["template_too_large"]  # one problem, found without parsing 16 KB
