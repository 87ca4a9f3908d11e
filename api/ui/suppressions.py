"""The admin UI's suppression-list actions (CSRF-protected POSTs on a company's page): add a learner with a
reason, remove one with a reason. Each produces the event the API's own routes produce (api/suppressions.py),
signed by the admin's key id."""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import ValidationError

from api.state import STATE
from api.ui.pages import company_id_of
from api.ui.state import require_post
from api.ui.views import PREFIX
from schemas.events.suppression import SuppressionAdded, SuppressionRemoved

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


def _userid(raw: str) -> int:
    return int(raw) if raw.isascii() and raw.isdigit() and 1 <= len(raw) <= 12 else 0  # 0 fails validation


@routes.post(PREFIX + "/companies/{company_id}/suppressions")
async def add(request: web.Request) -> web.Response:
    session, form = await require_post(request)
    company_id = company_id_of(request)
    back = f"{PREFIX}/companies/{company_id}"
    try:
        event = SuppressionAdded(company_id=company_id, userid=_userid(form.get("userid", "").strip()),
                                 scope=form.get("scope", "*").strip() or "*", source="manual",
                                 reason=form.get("reason", "").strip(), changed_by=f"ui:{session.key_id}")
    except ValidationError:
        raise web.HTTPSeeOther(f"{back}?notice=suppression_invalid") from None
    await request.app[STATE].publisher.send_and_wait(event)
    log.info("UI: learner %s of company %s suppressed (%s) by %s", event.userid, company_id, event.scope,
             session.key_id)
    raise web.HTTPSeeOther(f"{back}?notice=suppression_added")


@routes.post(PREFIX + "/companies/{company_id}/suppressions/remove")
async def remove(request: web.Request) -> web.Response:
    session, form = await require_post(request)
    company_id = company_id_of(request)
    back = f"{PREFIX}/companies/{company_id}"
    try:
        event = SuppressionRemoved(company_id=company_id, userid=_userid(form.get("userid", "").strip()),
                                   scope=form.get("scope", "*").strip() or "*",
                                   reason=form.get("reason", "").strip(), changed_by=f"ui:{session.key_id}")
    except ValidationError:
        raise web.HTTPSeeOther(f"{back}?notice=suppression_invalid") from None
    await request.app[STATE].publisher.send_and_wait(event)
    log.info("UI: learner %s of company %s taken off the list (%s) by %s", event.userid, company_id, event.scope,
             session.key_id)
    raise web.HTTPSeeOther(f"{back}?notice=suppression_removed")
