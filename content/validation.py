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
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import jinja2
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from content.certificates.templates import CertificateTemplateStore, TemplateNotFound
from content.email.templates import TemplateStore, UnknownTemplate
from schemas.events import JobRequested, Problem

if TYPE_CHECKING:
    from config.settings import Settings

UNKNOWN_TEMPLATE = "unknown_template"
TEMPLATE_DATA_MISSING = "template_data_missing"
TEMPLATE_INVALID = "template_invalid"

# What a certificate needs from template_data or the learner (streams/certificate_batches.certificate_input).
CERTIFICATE_FIELDS = ("course_name", "completion_date")
# What the certificate-ready email gets beside the job's data (streams/email_batches.CertificateMailer).
NOTIFY_FIELDS = {"certificate_url": "https://example.invalid/certificates/sample.pdf",
                 "verification_code": "SAMPLE-CODE"}

_found: ContextVar[set[str]] = ContextVar("missing_template_names")


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """Why no learner of a job could be served: a code a client can match, the field, words, missing names."""

    code: str
    field: str
    message: str
    missing: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "field": self.field, "message": self.message}
        if self.missing:
            out["missing"] = list(self.missing)
        return out

    def as_problem(self) -> Problem:
        return Problem(field=self.field, message=self.message, code=self.code)


def refusal_code(problems: list[TemplateProblem]) -> str:
    """One problem kind: its own code; several kinds: ``invalid_job`` (as api.ingest does)."""
    codes = {p.code for p in problems}
    return codes.pop() if len(codes) == 1 else "invalid_job"


class _Recording(jinja2.ChainableUndefined):
    """Renders as empty and notes the name wherever StrictUndefined (the worker's choice) would raise;
    ``is defined`` tests note nothing, so a guarded optional value is not reported."""

    __slots__ = ()

    def _note(self) -> None:
        # Only top-level names: an attribute missing on a value the job did give may be one learner's matter.
        if self._undefined_obj is jinja2.utils.missing and self._undefined_name:
            found = _found.get(None)
            if found is not None:
                found.add(self._undefined_name)

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._note()
        super()._fail_with_undefined_error(*args, **kwargs)
        raise AssertionError("unreachable")

    def __str__(self) -> str:
        self._note()
        return ""

    def __iter__(self) -> Iterator[Any]:
        self._note()
        return iter(())

    def __bool__(self) -> bool:
        self._note()
        return False

    def __len__(self) -> int:
        self._note()
        return 0

    def __getattr__(self, name: str) -> Any:
        if name[:2] == "__":
            raise AttributeError(name)
        self._note()
        return self

    __getitem__ = __getattr__


# jinja2.Undefined binds its operators (``+``, ``<``, calls ...) to the base _fail_with_undefined_error when the
# class is made; point them at the noting one.
for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
              "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pos__", "__neg__", "__call__", "__lt__",
              "__le__", "__gt__", "__ge__", "__int__", "__float__", "__complex__", "__pow__", "__rpow__"):
    setattr(_Recording, _name, _Recording._fail_with_undefined_error)


class TemplateCheck:
    """Checks a job's templates against its data; compiled templates are cached per id."""

    def __init__(self, email_templates: TemplateStore, certificate_templates: CertificateTemplateStore) -> None:
        self.email_templates = email_templates
        self.certificate_templates = certificate_templates
        common: dict[str, Any] = {"undefined": _Recording, "keep_trailing_newline": True}
        self._text_env = ImmutableSandboxedEnvironment(autoescape=False, **common)
        self._html_env = ImmutableSandboxedEnvironment(autoescape=True, **common)
        self._compiled: dict[str, tuple[jinja2.Template, ...]] = {}
        self._lock = threading.Lock()

    def problems(self, job: JobRequested) -> list[TemplateProblem]:
        """Every job-wide template problem; empty when the job can be tried learner by learner."""
        data = dict(job.template_data)
        learner = sample_learner(job)
        if job.type == "email":
            return self._email(job.template_id, "template_id", {**data, **learner})
        problems = self._certificate(job.template_id, data, learner)
        if job.notify_template_id is not None:
            problems += self._email(job.notify_template_id, "notify_template_id",
                                    {**data, **learner, **NOTIFY_FIELDS})
        return problems

    def _email(self, template_id: str, field_name: str, context: Mapping[str, Any]) -> list[TemplateProblem]:
        try:
            compiled = self._email_compiled(template_id)
        except UnknownTemplate:
            return [TemplateProblem(UNKNOWN_TEMPLATE, field_name, f"there is no email template {template_id!r}")]
        except jinja2.TemplateSyntaxError as exc:
            return [TemplateProblem(TEMPLATE_INVALID, field_name, f"email template {template_id!r} has a syntax "
                                                                  f"error on line {exc.lineno}: {exc.message}")]
        found: set[str] = set()
        token = _found.set(found)
        try:
            for template in compiled:
                try:
                    template.render(context)
                except jinja2.UndefinedError:
                    pass  # the name is noted; the other parts may name more
                except jinja2.exceptions.SecurityError as exc:
                    return [TemplateProblem(TEMPLATE_INVALID, field_name,
                                            f"email template {template_id!r}: {exc.message or exc}")]
                except Exception:  # noqa: BLE001 - an error with the sample's own values is one learner's matter
                    pass
        finally:
            _found.reset(token)
        if not found:
            return []
        missing = tuple(sorted(found))
        return [TemplateProblem(
            TEMPLATE_DATA_MISSING, "template_data",
            f"email template {template_id!r} needs {', '.join(missing)}, which neither template_data nor any "
            f"recipient gives", missing)]

    def _email_compiled(self, template_id: str) -> tuple[jinja2.Template, ...]:
        compiled = self._compiled.get(template_id)
        if compiled is None:
            source = self.email_templates.get(template_id)
            compiled = (self._text_env.from_string(source.subject), self._text_env.from_string(source.text),
                        self._html_env.from_string(source.html))
            with self._lock:
                self._compiled[template_id] = compiled
        return compiled

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


def job_template_problems(job: JobRequested, settings: Settings) -> list[TemplateProblem]:
    """The check the API and the route agent both run."""
    return template_check(settings.template_dir, settings.certificate_template_dir).problems(job)
