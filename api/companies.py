"""Company cloud settings: read from the read model, changed by emitting CompanySettingsChanged."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api import params
from api.errors import ApiError, json_response
from api.state import body_of, caller_of, state_of
from schemas.events import CompanySettingsChanged

routes = web.RouteTableDef()


class CompanySettingsChange(BaseModel):
    """The body of a settings change: the whole row (PUT replaces it); who and when come from the request."""

    model_config = ConfigDict(extra="forbid", strict=True)

    cloud_enabled: bool
    use_cloud_for_emails: bool
    use_cloud_for_certificates: bool
    user_threshold: int = Field(ge=0, le=10_000_000)
    email_provider: Literal["ses", "sendgrid", "mailgun"] = "ses"
    storage_provider: Literal["s3", "r2"] = "s3"
    monthly_budget: float | None = Field(default=None, ge=0, le=1e9)  # cloud spend per UTC month; None: no limit
    over_budget: Literal["local", "wait"] = "local"  # over budget: route local, or wait for the budget


def visible_company(request: web.Request) -> int:
    company_id = params.company_id(request)
    if not caller_of(request).may_see(company_id):
        raise ApiError(404, "company_not_found", "no such company")
    return company_id


@routes.get("/api/v1/companies/{company_id}/settings")
async def get_company_settings(request: web.Request) -> web.Response:
    company_id = visible_company(request)
    row = await state_of(request).store.company_settings(company_id)
    if row is None:
        defaults = CompanySettingsChanged(company_id=company_id).model_dump(exclude={"changed_at", "changed_by"})
        return json_response({**defaults, "configured": False, "changed_by": None, "changed_at": None,
                              "note": "no settings: every job of this company is processed locally"})
    return json_response({**row, "configured": True})


@routes.put("/api/v1/companies/{company_id}/settings")
async def put_company_settings(request: web.Request) -> web.Response:
    company_id = visible_company(request)
    state, caller = state_of(request), caller_of(request)
    body = params.json_object(body_of(request), required=True)
    try:
        change = CompanySettingsChange.model_validate(body)
    except ValidationError as exc:
        problems = [{"code": "invalid_field", "field": ".".join(str(p) for p in e["loc"]) or "(root)",
                     "message": e["msg"]} for e in exc.errors(include_url=False, include_input=False)]
        raise ApiError(422, "invalid_settings", f"the settings have {len(problems)} problem(s); nothing changed",
                       problems=problems) from None
    event = CompanySettingsChanged(company_id=company_id, changed_by=caller.key_id, **change.model_dump())
    await state.publisher.send_and_wait(event)
    return json_response({**event.model_dump(mode="json"), "status": "change_requested"}, status=202)
