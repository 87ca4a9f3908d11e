"""The admin UI's company templates: list a company's own templates, preview a draft, publish it, retire one.

The same check and events as the signed API (api/template_publishing.py): a draft with problems is shown
back with every problem and nothing is published; a preview shows the subject, the text and the HTML source as
rendered against the sample data (the HTML is shown as source, never rendered in the admin's page).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from multidict import MultiDict

from api.errors import ApiError
from api.state import STATE
from api.template_publishing import check_draft, effective_template, parse_draft, publish, retire
from api.template_reads import templates_of
from api.ui.pages import company_id_of
from api.ui.sessions import check_csrf, read_form
from api.ui.state import render, require, same_origin
from api.ui.views import PREFIX
from content.email import TemplateStore, valid_template_id

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
PAGE = PREFIX + "/companies/{company_id}/templates"
FIELDS = ("template_id", "subject", "html", "text", "variables", "sample_data", "description")


async def _page(request: web.Request, company_id: int, *, draft: dict[str, str], status: int = 200,
                problems: list[dict[str, Any]] | None = None, report: dict[str, Any] | None = None) -> web.Response:
    state = request.app[STATE]
    rows = await templates_of(state.store, company_id)
    return render(request, "company_templates.html", require(request), status=status,
                  title=f"Templates of company {company_id}", company_id=company_id, templates=rows,
                  builtin=TemplateStore(state.settings.template_dir).ids(), draft=draft, problems=problems or [],
                  report=report)


@routes.get(PAGE)
async def templates_page(request: web.Request) -> web.Response:
    require(request)
    company_id = company_id_of(request)
    draft = {name: "" for name in FIELDS}
    edit = request.query.get("edit", "")
    if valid_template_id(edit):  # start from what a job naming this id renders now
        current = await effective_template(request.app[STATE], company_id, edit)
        if current is not None:
            draft.update(template_id=edit, subject=current.subject, html=current.html, text=current.text)
    return await _page(request, company_id, draft=draft)


def _draft_body(form: MultiDict[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The form as the API's draft body, and the problems of the form's own fields."""
    problems: list[dict[str, Any]] = []
    body: dict[str, Any] = {"subject": form.get("subject", ""), "html": form.get("html", ""),
                            "text": form.get("text", "")}
    names = [n.strip() for n in form.get("variables", "").split(",") if n.strip()]
    if names:
        body["variables"] = names
    if form.get("description", "").strip():
        body["description"] = form.get("description", "").strip()
    sample = form.get("sample_data", "").strip()
    if sample:
        try:
            body["sample_data"] = json.loads(sample)
        except (ValueError, RecursionError):  # RecursionError: an 8 KiB form holds JSON ~8,000 deep
            problems.append({"field": "sample_data", "message": "sample data must be a JSON object"})
        else:
            if not isinstance(body["sample_data"], dict):
                problems.append({"field": "sample_data", "message": "sample data must be a JSON object"})
    if not valid_template_id(form.get("template_id", "")):
        problems.append({"field": "template_id", "message": "1-64 characters of a-z, 0-9, _ and -"})
    return body, problems


async def _form(request: web.Request) -> tuple[str, MultiDict[str]]:
    """A same-origin, CSRF-checked form; large enough for a template (the UI's other forms are small)."""
    session = require(request)
    same_origin(request)
    limit = request.app[STATE].settings.template_max_bytes * 3 + 64 * 1024  # URL encoding triples at worst
    form = await read_form(request, limit)
    check_csrf(form.get("csrf_token"), session)
    return session.key_id, form


@routes.post(PAGE)
async def preview_or_publish(request: web.Request) -> web.Response:
    key_id, form = await _form(request)
    state = request.app[STATE]
    company_id = company_id_of(request)
    draft = {name: form.get(name, "") for name in FIELDS}
    body, problems = _draft_body(form)
    if problems:
        return await _page(request, company_id, draft=draft, status=422, problems=problems)
    template_id = form["template_id"]
    try:
        parsed = parse_draft(body)
        if form.get("action") != "publish":
            report = check_draft(state, template_id, parsed).as_json()
            return await _page(request, company_id, draft=draft, report=report, problems=report["problems"],
                               status=200 if report["valid"] else 422)
        event, _ = await publish(state, company_id, template_id, parsed, f"ui:{key_id}")
    except ApiError as exc:
        return await _page(request, company_id, draft=draft, status=exc.status,
                           problems=exc.extra.get("problems") or [{"field": "", "message": exc.message}])
    log.info("UI: company %s template %s version %d published by %s", company_id, template_id, event.version,
             key_id)
    raise web.HTTPSeeOther(f"{PREFIX}/companies/{company_id}/templates?notice=template_published")


@routes.post(PAGE + "/{template_id}/retire")
async def retire_template(request: web.Request) -> web.Response:
    key_id, form = await _form(request)
    company_id = company_id_of(request)
    template_id = request.match_info["template_id"]
    if not valid_template_id(template_id):
        raise web.HTTPNotFound(text="no such template")
    reason = form.get("reason", "").strip()[:500] or None
    try:
        await retire(request.app[STATE], company_id, template_id, f"ui:{key_id}", reason)
    except ApiError as exc:
        raise web.HTTPSeeOther(f"{PREFIX}/companies/{company_id}/templates?notice="
                               + ("template_retired" if exc.status == 409 else "template_unknown")) from None
    raise web.HTTPSeeOther(f"{PREFIX}/companies/{company_id}/templates?notice=template_retired")
