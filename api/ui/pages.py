"""The admin UI's pages (GET): the job list, a job with its learners and history, the companies, a company.

Every query goes through the read store (api/store.py); the pages only shape rows for the templates.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from api.pauses import pause_of
from api.state import STATE, ApiState
from api.ui.state import int_param, render, require
from api.ui.views import (
    CANCELLED,
    JOB_TYPES,
    PREFIX,
    STATUSES,
    format_time,
    history_item,
    job_view,
    safe_link,
)
from projections.jobs import FINISHED
from schemas.events import CompanySettingsChanged

routes = web.RouteTableDef()
JOBS_PER_PAGE = 25
RECIPIENTS_PER_PAGE = 50
SETTINGS_FIELDS = ("cloud_enabled", "use_cloud_for_emails", "use_cloud_for_certificates", "user_threshold",
                   "email_provider", "storage_provider", "monthly_budget", "over_budget")
SETTINGS_CHANGED = CompanySettingsChanged.ce_type


async def load_job(state: ApiState, job_id: str) -> dict[str, Any] | None:
    """A job as the pages show it: counters, top errors, whether a cancel was asked for, which buttons apply."""
    row, errors = await state.store.job_with_errors(job_id)
    if row is None:
        return None
    view = job_view(row, errors, await state.store.was_requested(job_id, CANCELLED))
    view["pause"] = await pause_of(state.store, job_id)  # why it paused (figures), or that it was resumed
    view["can_resume"] = bool(view["pause"] and view["pause"]["paused"]) and row["status"] not in FINISHED
    return view


async def load_history(state: ApiState, job_id: str, after: int = 0) -> list[dict[str, Any]]:
    return [history_item(r) for r in await state.store.job_history(job_id, after)]


@routes.get(PREFIX + "/jobs")
async def jobs_page(request: web.Request) -> web.Response:
    session = require(request)
    store = request.app[STATE].store
    company = int_param(request, "company")
    status = request.query.get("status") if request.query.get("status") in STATUSES else None
    job_type = request.query.get("type") if request.query.get("type") in JOB_TYPES else None
    page = max(int_param(request, "page", 1, high=10**6) or 1, 1)
    rows, total = await store.job_list(company_id=company, status=status, job_type=job_type, cancel_type=CANCELLED,
                                       limit=JOBS_PER_PAGE, offset=(page - 1) * JOBS_PER_PAGE)
    companies = await store.companies_with_jobs()
    pages = max((total + JOBS_PER_PAGE - 1) // JOBS_PER_PAGE, 1)
    filters = {k: v for k, v in (("company", company), ("status", status), ("type", job_type)) if v is not None}

    def page_url(n: int) -> str:
        return f"{PREFIX}/jobs?{urlencode({**filters, 'page': n})}"

    return render(request, "jobs.html", session, title="Jobs",
                  jobs=[job_view(r, [], r["cancel_requested"]) for r in rows], total=total, page=page,
                  pages=pages, page_url=page_url, companies=companies, statuses=STATUSES, types=JOB_TYPES,
                  filters=filters)


@routes.get(PREFIX + "/jobs/{job_id}")
async def job_page(request: web.Request) -> web.Response:
    session = require(request)
    state = request.app[STATE]
    job_id = request.match_info["job_id"]
    job = await load_job(state, job_id) if len(job_id) <= 128 else None
    if job is None:
        return render(request, "error.html", session, status=404, title="Job not found",
                      message="No job with this id is known (yet). A job just submitted appears once the "
                              "worker has accepted it.")
    failed_only = request.query.get("failed") == "1"
    page = max(int_param(request, "page", 1, high=10**6) or 1, 1)
    recipients = await state.store.recipients(job_id, status="failed" if failed_only else None,
                                              limit=RECIPIENTS_PER_PAGE + 1, offset=(page - 1) * RECIPIENTS_PER_PAGE)
    has_next = len(recipients) > RECIPIENTS_PER_PAGE
    recipients = recipients[:RECIPIENTS_PER_PAGE]
    for r in recipients:
        r["certificate_link"] = safe_link(r.pop("certificate_url"))
    history = await load_history(state, job_id)

    def page_url(n: int, failed: bool = failed_only) -> str:
        query = {"failed": "1"} if failed else {}
        if n > 1:
            query["page"] = str(n)
        return f"{PREFIX}/jobs/{job_id}" + (f"?{urlencode(query)}" if query else "") + "#recipients"

    return render(request, "job.html", session, title=f"Job {job_id}", job=job, recipients=recipients,
                  failed_only=failed_only, page=page, has_next=has_next, page_url=page_url, history=history,
                  last_event=history[-1]["id"] if history else 0)


@routes.get(PREFIX + "/companies")
async def companies_page(request: web.Request) -> web.Response:
    session = require(request)
    wanted = request.query.get("company", "")
    if wanted.isascii() and wanted.isdigit() and len(wanted) <= 9:
        raise web.HTTPSeeOther(f"{PREFIX}/companies/{int(wanted)}")
    rows = await request.app[STATE].store.companies_overview()
    return render(request, "companies.html", session, title="Companies", companies=rows)


def default_settings(company_id: int) -> dict[str, Any]:
    return CompanySettingsChanged(company_id=company_id).model_dump(include=set(SETTINGS_FIELDS))


async def load_company(state: ApiState, company_id: int) -> tuple[dict[str, Any], bool, list[dict[str, Any]]]:
    """A company's settings (or the defaults), whether it has any, and its changes newest first."""
    row = await state.store.company_settings(company_id)
    history = await state.store.settings_history(company_id, SETTINGS_CHANGED)
    changes = []
    for i, h in enumerate(history):
        detail = h["detail"] if isinstance(h["detail"], dict) else {}
        before = history[i + 1]["detail"] if i + 1 < len(history) else None
        changed = [f for f in SETTINGS_FIELDS if before is None or before.get(f) != detail.get(f)]
        changes.append({"at": format_time(h["occurred_at"]), "actor": h["actor"] or "(unknown)",
                        "values": {f: detail.get(f) for f in SETTINGS_FIELDS}, "changed": changed})
    return (row or default_settings(company_id)), row is not None, changes


def company_id_of(request: web.Request) -> int:
    raw = request.match_info["company_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise web.HTTPNotFound(text="no such company")
    return int(raw)


@routes.get(PREFIX + "/companies/{company_id}")
async def company_page(request: web.Request) -> web.Response:
    session = require(request)
    company_id = company_id_of(request)
    current, configured, changes = await load_company(request.app[STATE], company_id)
    suppressions = await request.app[STATE].store.suppressions(company_id, limit=200)
    return render(request, "company.html", session, title=f"Company {company_id}", company_id=company_id,
                  current=current, configured=configured, changes=changes, problems=[],
                  fields=SETTINGS_FIELDS, suppressions=suppressions)
