"""A company's suppression list over the API: list it, add a learner with a reason, remove one with a reason.

Every change is an event on the ``suppressions`` topic (SuppressionAdded / SuppressionRemoved, with the key id
that asked), so the worker's list and the read model follow it and the audit log keeps who and why. Provider
reports become suppressions here too (``suppression_for_report``): a hard bounce stops all mail to that
address, a complaint all bulk mail of the company.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api import params
from api.errors import ApiError, json_response
from api.state import body_of, caller_of, state_of
from api.store import ReadStore
from schemas.events import RecipientBounced, RecipientComplained
from schemas.events.suppression import ALL_BULK, ALL_MAIL, Scope, SuppressionAdded, SuppressionRemoved

routes = web.RouteTableDef()


class ManualEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    userid: int = Field(ge=1)
    scope: Scope = ALL_MAIL
    reason: str = Field(min_length=1, max_length=500)
    email: str | None = Field(default=None, max_length=254)


class Removal(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    scope: Scope = ALL_MAIL
    reason: str = Field(min_length=1, max_length=500)


def _visible_company(request: web.Request) -> int:
    company_id = params.company_id(request)
    if not caller_of(request).may_see(company_id):
        raise ApiError(404, "company_not_found", "no such company")
    return company_id


def _parse(model: type[BaseModel], request: web.Request) -> Any:
    try:
        return model.model_validate(params.json_object(body_of(request), required=True))
    except ValidationError as exc:
        problems = [{"code": "invalid_field", "field": ".".join(str(p) for p in e["loc"]) or "(root)",
                     "message": e["msg"]} for e in exc.errors(include_url=False, include_input=False)]
        raise ApiError(422, "invalid_suppression", f"the request has {len(problems)} problem(s); nothing changed",
                       problems=problems) from None


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "since": row["since"].isoformat()}


@routes.get("/api/v1/companies/{company_id}/suppressions")
async def list_suppressions(request: web.Request) -> web.Response:
    company_id = _visible_company(request)
    limit, offset = params.page(request)
    userid = params.integer(request, "userid", 0, low=1, high=10**12) or None
    store = state_of(request).store
    rows = await store.suppressions(company_id, userid=userid, limit=limit, offset=offset)
    history = await store.suppression_history(company_id, limit=limit)
    return json_response({
        "company_id": company_id, "suppressions": [_row(r) for r in rows],
        "history": [{"at": h["occurred_at"].isoformat(), "event": h["event_type"].split(".")[-2],
                     "entry": h["subject"], "by": h["actor"], "detail": h["detail"]} for h in history],
    })


@routes.post("/api/v1/companies/{company_id}/suppressions")
async def add_suppression(request: web.Request) -> web.Response:
    company_id = _visible_company(request)
    entry: ManualEntry = _parse(ManualEntry, request)
    event = SuppressionAdded(company_id=company_id, userid=entry.userid, scope=entry.scope, source="manual",
                             reason=entry.reason, email=entry.email, changed_by=caller_of(request).key_id)
    await state_of(request).publisher.send_and_wait(event)
    return json_response({**event.model_dump(mode="json"), "status": "change_requested"}, status=202)


@routes.delete("/api/v1/companies/{company_id}/suppressions/{userid}")
async def remove_suppression(request: web.Request) -> web.Response:
    company_id = _visible_company(request)
    raw = request.match_info["userid"]
    if not raw.isascii() or not raw.isdigit() or not 1 <= len(raw) <= 12 or int(raw) < 1:
        raise ApiError(404, "suppression_not_found", "no such learner")
    removal: Removal = _parse(Removal, request)
    event = SuppressionRemoved(company_id=company_id, userid=int(raw), scope=removal.scope, reason=removal.reason,
                               changed_by=caller_of(request).key_id)
    await state_of(request).publisher.send_and_wait(event)
    return json_response({**event.model_dump(mode="json"), "status": "change_requested"}, status=202)


async def suppression_for_report(store: ReadStore, report: Any) -> SuppressionAdded | None:
    """The suppression a provider report calls for: a hard bounce (every message to that address) or a
    complaint (every bulk message); None for anything else or a job the read model does not know."""
    if isinstance(report, RecipientBounced) and report.permanent:
        source, scope, email = "bounce", ALL_MAIL, report.email
    elif isinstance(report, RecipientComplained):
        source, scope, email = "complaint", ALL_BULK, None
    else:
        return None
    company_id = await store.job_company(report.job_id)
    if company_id is None:
        return None
    reason = f"{source} reported by {report.provider}" + (f": {report.detail}" if report.detail else "")
    return SuppressionAdded(company_id=company_id, userid=report.userid, scope=scope, source=source,  # type: ignore[arg-type]
                            reason=reason[:500], email=email, job_id=report.job_id,
                            provider_event_id=report.provider_event_id)
