"""Refuse a job whose template cannot work for anyone, before a single learner is tried.

A template id that names no template, or a template that needs a value neither the job's ``template_data`` nor
any of its recipients gives, would fail every learner one by one; that is a bad request, and the API (422) and
the route agent (``JobRejected``) refuse it as one. The check renders each template once, in the same sandbox
as the worker, against the job's data and a sample learner: the first recipient, plus every extra field any
recipient carries (a field only some learners lack fails just those learners, later, as before). Missing
names are collected while rendering, so one answer lists all of them.

What only some learners hit (one bad address, one learner without ``course_name``) is not refused here.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from content.certificates.templates import CertificateTemplateStore, TemplateNotFound
from content.email.missing import MissingNames, UnsafeTemplate
from content.email.sources import DEFAULT_MAX_BYTES, TEMPLATE_INVALID, inline_template, source_problems
from content.email.templates import EmailTemplate, TemplateStore, UnknownTemplate
from content.problems import TemplateProblem, refusal_code
from schemas.events import JobRequested

if TYPE_CHECKING:
    from config.settings import Settings

UNKNOWN_TEMPLATE = "unknown_template"
TEMPLATE_DATA_MISSING = "template_data_missing"
__all__ = ["TEMPLATE_INVALID", "TemplateCheck", "TemplateProblem", "job_template_problems", "refusal_code"]

# What a certificate needs from template_data or the learner (streams/certificate_batches.certificate_input).
CERTIFICATE_FIELDS = ("course_name", "completion_date")
# What the certificate-ready email gets beside the job's data (streams/email_batches.CertificateMailer).
NOTIFY_FIELDS = {"certificate_url": "https://example.invalid/certificates/sample.pdf",
                 "verification_code": "SAMPLE-CODE"}

class TemplateCheck:
    """Checks a job's templates against its data; compiled templates are cached (see content.email.missing)."""

    def __init__(self, email_templates: TemplateStore, certificate_templates: CertificateTemplateStore) -> None:
        self.email_templates = email_templates
        self.certificate_templates = certificate_templates
        self._names = MissingNames()

    def problems(self, job: JobRequested, *, email_template: EmailTemplate | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> list[TemplateProblem]:
        """Every job-wide template problem; empty when the job can be tried learner by learner.

        ``email_template``: the template the job will use when it is not the built-in one of its id (the
        company's own version); a job with inline ``content`` is checked against that content instead.
        """
        data = dict(job.template_data)
        learner = sample_learner(job)
        if job.content is not None:
            if job.type != "email":
                return [TemplateProblem(TEMPLATE_INVALID, "content", "inline content is for email jobs only")]
            inline = inline_template(job.template_id, job.content)
            problems = source_problems(inline, max_bytes=max_bytes, field="content")
            return problems or self._email(inline, "content", {**data, **learner})
        if job.type == "email":
            return self._email(email_template or job.template_id, "template_id", {**data, **learner})
        problems = self._certificate(job.template_id, data, learner)
        if job.notify_template_id is not None:
            problems += self._email(job.notify_template_id, "notify_template_id",
                                    {**data, **learner, **NOTIFY_FIELDS})
        return problems

    def _email(self, template: EmailTemplate | str, field_name: str,
               context: Mapping[str, Any]) -> list[TemplateProblem]:
        if isinstance(template, str):
            try:
                template = self.email_templates.get(template)
            except UnknownTemplate:
                return [TemplateProblem(UNKNOWN_TEMPLATE, field_name, f"there is no email template {template!r}")]
        name = template.id
        try:
            missing = self._names.missing(template, context)
        except jinja2.TemplateSyntaxError as exc:
            return [TemplateProblem(TEMPLATE_INVALID, field_name, f"email template {name!r} has a syntax "
                                                                  f"error on line {exc.lineno}: {exc.message}")]
        except UnsafeTemplate as exc:
            return [TemplateProblem(TEMPLATE_INVALID, field_name, f"email template {name!r}: {exc}")]
        if not missing:
            return []
        return [TemplateProblem(
            TEMPLATE_DATA_MISSING, "template_data",
            f"email template {name!r} needs {', '.join(missing)}, which neither template_data nor any "
            f"recipient gives", missing)]

    def _certificate(self, template_id: str, data: Mapping[str, Any],
                     learner: Mapping[str, Any]) -> list[TemplateProblem]:
        try:
            self.certificate_templates.get(template_id)
        except (TemplateNotFound, ValueError):
            return [TemplateProblem(UNKNOWN_TEMPLATE, "template_id",
                                    f"there is no certificate template {template_id!r}")]
        missing = tuple(name for name in CERTIFICATE_FIELDS if _blank(data.get(name)) and _blank(learner.get(name)))
        if not missing:
            return []
        return [TemplateProblem(
            TEMPLATE_DATA_MISSING, "template_data",
            f"certificate template {template_id!r} needs {', '.join(missing)}, which neither template_data nor any "
            f"recipient gives", missing)]


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def sample_learner(job: JobRequested) -> dict[str, Any]:
    """The first recipient's fields, plus the first non-blank value of each extra field any recipient has."""
    sample: dict[str, Any] = {}
    for recipient in job.recipients:
        for key, value in (recipient.model_extra or {}).items():
            if key not in sample or _blank(sample[key]):
                sample[key] = value
    sample.update(job.recipients[0].template_fields())
    return sample


@dataclass
class _Checks:
    by_dirs: dict[tuple[Path | None, Path | None], TemplateCheck] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_checks = _Checks()


def template_check(template_dir: Path | None, certificate_template_dir: Path | None) -> TemplateCheck:
    """One shared check per pair of template directories (Settings.template_dir, certificate_template_dir)."""
    key = (template_dir, certificate_template_dir)
    with _checks.lock:
        check = _checks.by_dirs.get(key)
        if check is None:
            check = _checks.by_dirs[key] = TemplateCheck(TemplateStore(template_dir),
                                                         CertificateTemplateStore(certificate_template_dir))
        return check


def job_template_problems(job: JobRequested, settings: Settings, *,
                          email_template: EmailTemplate | None = None) -> list[TemplateProblem]:
    """The check the API and the route agent both run; ``email_template``: the company's own version, if any."""
    return template_check(settings.template_dir, settings.certificate_template_dir).problems(
        job, email_template=email_template, max_bytes=settings.template_max_bytes)
