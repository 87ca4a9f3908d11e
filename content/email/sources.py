"""Email template sources that do not come from disk: a company's published versions and a job's inline content.

Whoever wrote them, they run in the worker's sandbox and are checked the same way before anyone may use them:
size, syntax of each part, and escaping. HTML is autoescaped as for the built-in templates; a template may not
switch that off (``|safe``, ``{% autoescape false %}``), because the values it prints come from learners and
Moodle, and one learner's name must never become markup in another's message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from content.email.templates import EmailTemplate
from content.problems import TemplateProblem
from schemas.events import InlineContent, TemplatePublished

TEMPLATE_INVALID = "template_invalid"
TEMPLATE_TOO_LARGE = "template_too_large"
TEMPLATE_UNSAFE = "template_unsafe"
DEFAULT_MAX_BYTES = 256 * 1024
SUBJECT_MAX_CHARS = 2000
# What every learner gives (schemas.events.Recipient): a template never has to ask template_data for these.
LEARNER_FIELDS = frozenset({"userid", "email", "firstname", "lastname"})
PARTS = ("subject", "text", "html")

_PARSER = ImmutableSandboxedEnvironment(autoescape=True)


def inline_template(template_id: str, content: InlineContent) -> EmailTemplate:
    return EmailTemplate(id=template_id, subject=content.subject, text=content.text, html=content.html,
                         source="inline")


def published_template(event: TemplatePublished) -> EmailTemplate:
    return EmailTemplate(id=event.template_id, subject=event.subject_template, text=event.text, html=event.html,
                         source="company", version=event.version)


def content_digest(subject: str, text: str, html: str) -> str:
    digest = hashlib.sha256()
    for part in (subject, text, html):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def _sources(template: EmailTemplate) -> Iterator[tuple[str, str]]:
    yield "subject", template.subject
    yield "text", template.text
    yield "html", template.html


def source_problems(template: EmailTemplate, *, max_bytes: int = DEFAULT_MAX_BYTES,
                    field: str = "") -> list[TemplateProblem]:
    """Every problem of the template's own source (not of any data): size, empty parts, syntax, escaping.

    ``field`` prefixes the part names in the problems (``content.html``), so a client sees where each lies.
    """
    prefix = f"{field}." if field else ""
    problems: list[TemplateProblem] = []
    size = sum(len(source.encode("utf-8")) for _, source in _sources(template))
    if size > max_bytes:
        problems.append(TemplateProblem(TEMPLATE_TOO_LARGE, field or "(root)",
                                        f"subject, text and html are {size} bytes together; the limit is "
                                        f"{max_bytes} (template_max_bytes)"))
        if size > 4 * max_bytes:  # far too large to be worth parsing: the one problem says enough
            return problems
    if not template.subject.strip():
        problems.append(TemplateProblem(TEMPLATE_INVALID, f"{prefix}subject", "the subject is empty"))
    elif len(template.subject) > SUBJECT_MAX_CHARS:
        problems.append(TemplateProblem(TEMPLATE_INVALID, f"{prefix}subject",
                                        f"the subject is longer than {SUBJECT_MAX_CHARS} characters"))
    if not template.text.strip() and not template.html.strip():
        problems.append(TemplateProblem(TEMPLATE_INVALID, f"{prefix}text",
                                        "the message needs a text or an HTML part (or both)"))
    for part, source in _sources(template):
        try:
            tree = _PARSER.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            problems.append(TemplateProblem(TEMPLATE_INVALID, f"{prefix}{part}",
                                            f"syntax error on line {exc.lineno}: {exc.message}"))
            continue
        problems.extend(TemplateProblem(TEMPLATE_UNSAFE, f"{prefix}{part}", message)
                        for message in _unescaped(tree))
    return problems


def _unescaped(tree: nodes.Template) -> Iterator[str]:
    for node in tree.find_all((nodes.Filter, nodes.EvalContextModifier)):
        if isinstance(node, nodes.Filter) and node.name == "safe":
            yield f"line {node.lineno}: the |safe filter is not allowed: printed values are always escaped"
        elif isinstance(node, nodes.EvalContextModifier) and any(o.key == "autoescape" for o in node.options):
            yield f"line {node.lineno}: autoescape may not be switched off or on inside a template"


def variables_of(template: EmailTemplate) -> list[str]:
    """The names the template reads beyond the learner's own fields, sorted (guarded ones included)."""
    names: set[str] = set()
    for _, source in _sources(template):
        try:
            names |= meta.find_undeclared_variables(_PARSER.parse(source))
        except jinja2.TemplateSyntaxError:
            continue  # reported by source_problems
    return sorted(names - LEARNER_FIELDS)
