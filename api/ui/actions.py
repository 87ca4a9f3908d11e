"""The admin UI's actions (CSRF-protected POSTs): retry a job's failures, cancel a job, change a company's
cloud settings. Each writes only by producing the event the API's own routes produce."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, NoReturn

from aiohttp import web
from multidict import MultiDict
from pydantic import ValidationError

from api.companies import CompanySettingsChange
from api.state import STATE, ApiState
from api.ui.pages import SETTINGS_FIELDS, company_id_of, load_company, load_job
from api.ui.sessions import Session
from api.ui.state import render, require_post
from api.ui.views import PREFIX
from projections.jobs import FINISHED, JobStatus
from schemas.events import CompanySettingsChanged, JobCancelled, JobResumed, JobRetryRequested

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


@dataclass(frozen=True, slots=True)
class _JobAction:
    """A CSRF-checked POST about one job that exists: who asked, the form, and the job as the pages show it."""

    session: Session
    form: MultiDict[str]
    state: ApiState
    job_id: str
    job: dict[str, Any]

    @property
    def requested_by(self) -> str:
        return f"ui:{self.session.key_id}"

    @property
    def reason(self) -> str | None:
        """The form's optional reason (cancel, resume), trimmed and capped as the events carry it."""
        return self.form.get("reason", "").strip()[:500] or None

    def back(self, notice: str) -> NoReturn:
        """To the job's page, with a notice saying what happened."""
        raise web.HTTPSeeOther(f"{PREFIX}/jobs/{self.job_id}?notice={notice}")


async def _job_action(request: web.Request) -> _JobAction:
    session, form = await require_post(request)
    state = request.app[STATE]
    job_id = request.match_info["job_id"][:128]
    job = await load_job(state, job_id)
    if job is None:
        raise web.HTTPNotFound(text="no such job")
    return _JobAction(session, form, state, job_id, job)


@routes.post(PREFIX + "/jobs/{job_id}/retry")
async def retry(request: web.Request) -> web.Response:
    action = await _job_action(request)
    if action.job["status"] != JobStatus.COMPLETED:
        action.back("job_not_finished")
    if not action.job["progress"]["failed"]:
        action.back("nothing_to_retry")
    only_retryable = action.form.get("which", "retryable") != "all"
    await action.state.publisher.send_and_wait(JobRetryRequested(
        job_id=action.job_id, company_id=action.job["company_id"], requested_by=action.requested_by,
        only_retryable=only_retryable))
    log.info("UI: retry of job %s requested by %s (only retryable: %s)", action.job_id, action.session.key_id,
             only_retryable)
    action.back("retry_requested")


@routes.post(PREFIX + "/jobs/{job_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    action = await _job_action(request)
    if action.job["status"] in FINISHED:
        action.back("job_finished")
    await action.state.publisher.send_and_wait(JobCancelled(
        job_id=action.job_id, company_id=action.job["company_id"], requested_by=action.requested_by,
        reason=action.reason))
    log.info("UI: cancel of job %s requested by %s", action.job_id, action.session.key_id)
    action.back("cancel_requested")


@routes.post(PREFIX + "/jobs/{job_id}/resume")
async def resume(request: web.Request) -> web.Response:
    action = await _job_action(request)
    if not action.job["can_resume"]:
        action.back("job_not_paused")
    await action.state.publisher.send_and_wait(JobResumed(
        job_id=action.job_id, company_id=action.job["company_id"], requested_by=action.requested_by,
        reason=action.reason))
    log.info("UI: resume of job %s requested by %s", action.job_id, action.session.key_id)
    action.back("resume_requested")


_DECIMAL = re.compile(r"[0-9]{1,10}(\.[0-9]{1,6})?")  # ASCII digits only; anything else fails validation as typed


@routes.post(PREFIX + "/companies/{company_id}")
async def save_company(request: web.Request) -> web.Response:
    session, form = await require_post(request)
    state = request.app[STATE]
    company_id = company_id_of(request)
    threshold = form.get("user_threshold", "").strip()
    budget = form.get("monthly_budget", "").strip()
    values: dict[str, Any] = {
        "cloud_enabled": form.get("cloud_enabled") == "on",
        "use_cloud_for_emails": form.get("use_cloud_for_emails") == "on",
        "use_cloud_for_certificates": form.get("use_cloud_for_certificates") == "on",
        "user_threshold": int(threshold) if threshold.isascii() and threshold.isdigit() and len(threshold) <= 9
        else -1,
        "email_provider": form.get("email_provider", ""),
        "storage_provider": form.get("storage_provider", ""),
        # Every field of the row is in the form: a change replaces the whole row, so a budget left out would
        # silently be cleared. Empty means no limit.
        "monthly_budget": (float(budget) if _DECIMAL.fullmatch(budget) else budget) if budget else None,
        "over_budget": form.get("over_budget", "local"),
    }
    try:
        change = CompanySettingsChange.model_validate(values)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors(include_url=False, include_input=False)]
        _, configured, changes = await load_company(state, company_id)
        return render(request, "company.html", session, status=422, title=f"Company {company_id}",
                      company_id=company_id, current={**values, "user_threshold": threshold[:12]},
                      configured=configured, changes=changes, problems=problems, fields=SETTINGS_FIELDS)
    event = CompanySettingsChanged(company_id=company_id, changed_by=f"ui:{session.key_id}", **change.model_dump())
    await state.publisher.send_and_wait(event)
    log.info("UI: settings of company %s changed by %s", company_id, session.key_id)
    # Wait briefly for the projector so the page shows the change it just made.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        row = await state.store.company_settings(company_id)
        if row is not None and row["changed_at"] >= event.changed_at:
            raise web.HTTPSeeOther(f"{PREFIX}/companies/{company_id}?notice=settings_saved")
        await asyncio.sleep(0.2)
    raise web.HTTPSeeOther(f"{PREFIX}/companies/{company_id}?notice=settings_pending")
