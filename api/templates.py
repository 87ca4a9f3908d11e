"""Company email templates: list, get, preview, publish (TemplatePublished) and retire (TemplateRetired).

Signed like every API route; a company key sees and publishes only its own company's templates (another
company's answer 404, as for a company that does not exist), an admin key any company's. Reads come from the
read model; writes are events. Publishing refuses a template with any problem (422, every problem listed) and
publishes nothing then; preview runs the same check and always answers 200 with what it found and rendered.
"""

from __future__ import annotations

from aiohttp import web

from api import params
from api.companies import visible_company
from api.errors import ApiError, json_response
from api.state import body_of, caller_of, state_of
from api.template_publishing import check_draft, effective_template, parse_draft, publish, retire
from api.template_reads import template_head, template_version, template_versions, templates_of, version_json
from content.email import TemplateStore, valid_template_id
from content.email.preview import check_template

routes = web.RouteTableDef()
BASE = "/api/v1/companies/{company_id}/templates"


def _template_id(request: web.Request) -> str:
    value = request.match_info["template_id"]
    if not valid_template_id(value):
        raise ApiError(404, "template_not_found", "no such template (ids are 1-64 of a-z, 0-9, _ and -)")
    return value


@routes.get(BASE)
async def list_templates(request: web.Request) -> web.Response:
    company_id = visible_company(request)
    state = state_of(request)
    rows = await templates_of(state.store, company_id)
    return json_response({
        "company_id": company_id,
        "templates": [{"template_id": r["template_id"], "latest_version": r["latest_version"],
                       "retired": r["retired"], **version_json(r, with_sources=False)} for r in rows],
        "builtin": TemplateStore(state.settings.template_dir).ids(),
    })


@routes.get(BASE + "/{template_id}")
async def get_template(request: web.Request) -> web.Response:
    """The template a job of this company naming the id renders now, and the company's versions of it."""
    company_id, template_id = visible_company(request), _template_id(request)
    state = state_of(request)
    head = await template_head(state.store, company_id, template_id)
    current = await effective_template(state, company_id, template_id)
    if current is None and head is None:
        raise ApiError(404, "template_not_found", "no such template for this company, and no built-in one")
    versions = await template_versions(state.store, company_id, template_id)
    return json_response({
        "company_id": company_id, "template_id": template_id,
        "source": current.source if current else None, "version": current.version if current else None,
        "subject": current.subject if current else None, "html": current.html if current else None,
        "text": current.text if current else None,
        "retired": head["retired"] if head else None,
        "versions": [version_json(v, with_sources=False) for v in versions],
    })


@routes.get(BASE + "/{template_id}/versions/{version}")
async def get_template_version(request: web.Request) -> web.Response:
    company_id, template_id = visible_company(request), _template_id(request)
    raw = request.match_info["version"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise ApiError(404, "template_not_found", "no such version")
    row = await template_version(state_of(request).store, company_id, template_id, int(raw))
    if row is None:
        raise ApiError(404, "template_not_found", "no such version")
    return json_response({"company_id": company_id, "template_id": template_id, **version_json(row)})


@routes.post(BASE + "/{template_id}/preview")
async def preview_template(request: web.Request) -> web.Response:
    """A draft (subject, html, text, …) checked and rendered; or, with only ``sample_data``, the template jobs
    naming the id use now."""
    company_id, template_id = visible_company(request), _template_id(request)
    state = state_of(request)
    body = params.json_object(body_of(request), required=True)
    if "subject" in body:
        report = check_draft(state, template_id, parse_draft(body))
        source = "draft"
    else:
        sample = body.get("sample_data")
        if set(body) - {"sample_data"} or (sample is not None and not isinstance(sample, dict)):
            raise ApiError(422, "invalid_field", "send a draft (subject, html, text, variables, sample_data) or "
                                                 "only sample_data (an object) to preview the current template")
        current = await effective_template(state, company_id, template_id)
        if current is None:
            raise ApiError(404, "template_not_found", "no such template for this company, and no built-in one")
        report = check_template(current, sample_data=sample, max_bytes=state.settings.template_max_bytes)
        source = current.source
    return json_response({"company_id": company_id, "template_id": template_id, "source": source,
                          **report.as_json()})


@routes.put(BASE + "/{template_id}")
async def publish_template(request: web.Request) -> web.Response:
    company_id, template_id = visible_company(request), _template_id(request)
    state, caller = state_of(request), caller_of(request)
    draft = parse_draft(params.json_object(body_of(request), required=True))
    event, report = await publish(state, company_id, template_id, draft, caller.key_id)
    return json_response({"company_id": company_id, "template_id": template_id, "version": event.version,
                          "sha256": event.sha256, "variables": event.variables, "status": "published",
                          "published_at": event.published_at, **{"preview": report.as_json()["rendered"]}},
                         status=202)


@routes.delete(BASE + "/{template_id}")
async def retire_template(request: web.Request) -> web.Response:
    company_id, template_id = visible_company(request), _template_id(request)
    state, caller = state_of(request), caller_of(request)
    body = params.json_object(body_of(request), required=False)
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
        raise ApiError(422, "invalid_field", "reason must be a string of at most 500 characters")
    event = await retire(state, company_id, template_id, caller.key_id, reason)
    return json_response({"company_id": company_id, "template_id": template_id, "version": event.version,
                          "status": "retired", "retired_at": event.retired_at}, status=202)
