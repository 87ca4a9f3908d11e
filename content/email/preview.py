"""Check a template before it is published and show what it makes: every problem at once, and a rendering.

Publishing and previewing run the same check. Problems of the source (size, syntax, escaping: see
content.email.sources); names the template reads that the publisher did not declare; names it needs that the
supplied sample data lacks; and errors while rendering that sample. Without sample data, a sample is derived:
a made-up learner plus ``[name]`` for every variable, so a preview is always possible.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from content.email.missing import MissingNames, UnsafeTemplate
from content.email.sources import (
    DEFAULT_MAX_BYTES,
    LEARNER_FIELDS,
    TEMPLATE_INVALID,
    TEMPLATE_UNSAFE,
    source_problems,
    variables_of,
)
from content.email.templates import (
    EmailRenderer,
    EmailTemplate,
    RenderedEmail,
    TemplateRenderError,
    TemplateSecurityError,
    TemplateStore,
)
from content.problems import TemplateProblem

UNDEFINED_VARIABLE = "undefined_variable"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
RENDER_ERROR = "render_error"
SAMPLE_LEARNER: dict[str, Any] = {"userid": 1, "email": "learner@example.org", "firstname": "Ada",
                                  "lastname": "Lovelace"}

_names = MissingNames()
_renderer = EmailRenderer(TemplateStore())


@dataclass(frozen=True, slots=True)
class TemplateReport:
    """What the check found: problems (none: publishable), the variables, the sample used and the rendering."""

    problems: list[TemplateProblem]
    variables: list[str]
    sample: dict[str, Any]
    sample_kind: Literal["supplied", "derived"]
    rendered: RenderedEmail | None
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "valid": not self.problems,
            "problems": [p.as_json() for p in self.problems],
            "variables": self.variables,
            "sample": {"kind": self.sample_kind, "data": self.sample},
            "rendered": None if self.rendered is None else {
                "subject": self.rendered.subject, "text": self.rendered.text, "html": self.rendered.html},
            "warnings": self.warnings,
        }


def check_template(template: EmailTemplate, *, declared: Sequence[str] | None = None,
                   sample_data: Mapping[str, Any] | None = None,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> TemplateReport:
    """Every problem of ``template`` and, when its source can be compiled, its rendering against the sample."""
    problems = source_problems(template, max_bytes=max_bytes)
    variables = variables_of(template)
    if declared is not None:
        bad_names = tuple(name for name in declared if not _NAME.fullmatch(name))
        if bad_names:
            problems.append(TemplateProblem(UNDEFINED_VARIABLE, "variables",
                                            f"not usable as variable names: {', '.join(bad_names)}", bad_names))
        known = set(declared) | LEARNER_FIELDS
        undeclared = tuple(name for name in variables if name not in known)
        if undeclared:
            problems.append(TemplateProblem(
                UNDEFINED_VARIABLE, "variables",
                f"the template reads {', '.join(undeclared)}, which are not among its declared variables",
                undeclared))
        variables = sorted(set(variables) | (set(declared) - LEARNER_FIELDS))
    kind: Literal["supplied", "derived"] = "supplied" if sample_data is not None else "derived"
    if sample_data is None:
        sample: dict[str, Any] = {**SAMPLE_LEARNER, **{name: f"[{name}]" for name in variables}}
    else:
        sample = {**SAMPLE_LEARNER, **sample_data}
    if any(p.code == TEMPLATE_INVALID and "syntax error" in p.message for p in problems):
        return TemplateReport(problems, variables, sample, kind, None)
    try:
        missing = _names.missing(template, sample)
    except UnsafeTemplate as exc:
        problems.append(TemplateProblem(TEMPLATE_UNSAFE, "(root)", f"the sandbox refused it: {exc}"))
        return TemplateReport(problems, variables, sample, kind, None)
    if missing:
        problems.append(TemplateProblem(
            UNDEFINED_VARIABLE, "sample_data",
            f"the template needs {', '.join(missing)}, which the sample data does not give", missing))
        return TemplateReport(problems, variables, sample, kind, None)
    warnings: list[str] = []
    try:
        rendered: RenderedEmail | None = _renderer.render_template(template, {}, sample)
    except TemplateSecurityError as exc:
        rendered = None
        problems.append(TemplateProblem(TEMPLATE_UNSAFE, "(root)", f"the sandbox refused it: {exc.message}"))
    except TemplateRenderError as exc:
        rendered = None
        if kind == "supplied":
            problems.append(TemplateProblem(RENDER_ERROR, "sample_data", exc.message))
        else:  # made-up values ("[count]" where a number is expected) are no fault of the template
            warnings.append(f"the derived sample could not be rendered: {exc.message}; supply sample_data")
    return TemplateReport(problems, variables, sample, kind, rendered, warnings)
