"""The admin UI's suppression-list actions (CSRF-protected POSTs on a company's page): add a learner with a
reason, remove one with a reason. Each produces the event the API's own routes produce (api/suppressions.py),
signed by the admin's key id."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

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


async def _publish_change(request: web.Request, change: type[SuppressionAdded | SuppressionRemoved],
                         done: str, notice: str, **fields: Any) -> NoReturn:
    """Read and check the form, publish the change signed by the admin's key id, and go back to the company page
    with a notice (``suppression_invalid`` for a form the event refuses: nothing is published then)."""
    session, form = await require_post(request)
    company_id = company_id_of(request)
    back = f"{PREFIX}/companies/{company_id}"
    try:
        event = change(company_id=company_id, userid=_userid(form.get("userid", "").strip()),
                       scope=form.get("scope", "*").strip() or "*", reason=form.get("reason", "").strip(),
                       changed_by=f"ui:{session.key_id}", **fields)
    except ValidationError:
        raise web.HTTPSeeOther(f"{back}?notice=suppression_invalid") from None
    await request.app[STATE].publisher.send_and_wait(event)
    log.info("UI: learner %s of company %s %s (%s) by %s", event.userid, company_id, done, event.scope,
             session.key_id)
    raise web.HTTPSeeOther(f"{back}?notice={notice}")


@routes.post(PREFIX + "/companies/{company_id}/suppressions")
async def add(request: web.Request) -> web.Response:
    await _publish_change(request, SuppressionAdded, "suppressed", "suppression_added", source="manual")


@routes.post(PREFIX + "/companies/{company_id}/suppressions/remove")
async def remove(request: web.Request) -> web.Response:
    await _publish_change(request, SuppressionRemoved, "taken off the list", "suppression_removed")
