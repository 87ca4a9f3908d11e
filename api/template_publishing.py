"""Publishing a company's email template: check it, give it the next version number, hand the event to Kafka.

Used by the signed API (api/templates.py) and the admin UI alike. Nothing is published when the check finds a
problem. Version numbers are claimed in the store every API replica shares (security.seen), starting after
the read model's latest: two publishes racing for one number cannot both get it, even on two replicas, and a
publish right after another (before the projector has the first) gets the next number.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import ApiError
from api.state import ApiState
from api.template_reads import company_template, template_head
from content.email import EmailTemplate, TemplateStore, UnknownTemplate
from content.email.preview import TemplateReport, check_template
from content.email.sources import content_digest
from content.problems import refusal_code
from schemas.events import TemplatePublished, TemplateRetired

# A claimed number is remembered this long; the read model has the version long before.
_CLAIM_SECONDS = 7 * 24 * 3600
_CLAIM_TRIES = 50
_builtin: dict[Any, TemplateStore] = {}


class TemplateDraft(BaseModel):
    """A template as a client sends it to publish or preview; sample_data is used for the check only."""

    model_config = ConfigDict(extra="forbid", strict=True)

    subject: str = Field(max_length=2000)
    html: str = ""
    text: str = ""
    variables: list[str] | None = Field(default=None, max_length=200)
    sample_data: dict[str, Any] | None = None
    description: str | None = Field(default=None, max_length=500)

    def template(self, template_id: str) -> EmailTemplate:
        return EmailTemplate(id=template_id, subject=self.subject, text=self.text, html=self.html, source="company")


def parse_draft(body: dict[str, Any]) -> TemplateDraft:
    try:
        return TemplateDraft.model_validate(body)
    except ValidationError as exc:
        problems = [{"code": "invalid_field", "field": ".".join(str(p) for p in e["loc"]) or "(root)",
                     "message": e["msg"]} for e in exc.errors(include_url=False, include_input=False)]
        raise ApiError(422, "invalid_template", f"the template has {len(problems)} problem(s); nothing was "
                                                "published", problems=problems) from None


def check_draft(state: ApiState, template_id: str, draft: TemplateDraft) -> TemplateReport:
    return check_template(draft.template(template_id), declared=draft.variables, sample_data=draft.sample_data,
                          max_bytes=state.settings.template_max_bytes)


def refuse(report: TemplateReport, what: str = "published") -> ApiError:
    """The 422 that lists every problem the check found."""
    return ApiError(422, refusal_code(report.problems),
                    f"the template has {len(report.problems)} problem(s); nothing was {what}",
                    problems=[p.as_json() for p in report.problems], variables=report.variables)


async def publish(state: ApiState, company_id: int, template_id: str, draft: TemplateDraft,
                  by: str) -> tuple[TemplatePublished, TemplateReport]:
    """Check and publish; raises the 422 of :func:`refuse` when the check finds anything."""
    report = check_draft(state, template_id, draft)
    if report.problems:
        raise refuse(report)
    version = await _claim_version(state, company_id, template_id)
    event = TemplatePublished(
        company_id=company_id, template_id=template_id, version=version, subject_template=draft.subject,
        html=draft.html, text=draft.text, variables=report.variables, description=draft.description,
        sha256=content_digest(draft.subject, draft.text, draft.html), published_by=by)
    await state.publisher.send_and_wait(event)
    return event, report


async def retire(state: ApiState, company_id: int, template_id: str, by: str, reason: str | None) -> TemplateRetired:
    head = await template_head(state.store, company_id, template_id)
    if head is None:
        raise ApiError(404, "template_not_found", "this company has published no template of this id")
    if head["retired"]:
        raise ApiError(409, "template_retired", "this template is already retired")
    event = TemplateRetired(company_id=company_id, template_id=template_id, version=head["latest_version"],
                            reason=reason, retired_by=by)
    await state.publisher.send_and_wait(event)
    return event


async def effective_template(state: ApiState, company_id: int, template_id: str) -> EmailTemplate | None:
    """What a job of this company naming ``template_id`` would render now: its own version, else the built-in."""
    own = await company_template(state.store, company_id, template_id)
    if own is not None:
        return own
    store = _builtin.get(state.settings.template_dir)
    if store is None:
        store = _builtin[state.settings.template_dir] = TemplateStore(state.settings.template_dir)
    try:
        return store.get(template_id)
    except UnknownTemplate:
        return None


async def _claim_version(state: ApiState, company_id: int, template_id: str) -> int:
    head = await template_head(state.store, company_id, template_id)
    version = (head["latest_version"] if head else 0) + 1
    now = time.time()
    for _ in range(_CLAIM_TRIES):
        if await state.verifier.seen.first_time("template-version", f"{company_id}:{template_id}:{version}",
                                                expires_at=now + _CLAIM_SECONDS, now=now):
            return version
        version += 1
    raise ApiError(503, "template_busy", "could not claim a version number; publish again in a moment",
                   retry_after=state.settings.api_retry_after)
