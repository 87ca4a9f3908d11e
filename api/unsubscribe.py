"""One-click unsubscribe (RFC 8058): ``POST /u/<token>`` unsubscribes at once; ``GET`` only shows a button.

Mail clients that honour ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` POST that body to the link:
the learner is unsubscribed there and then (a RecipientUnsubscribed event, acknowledged by Kafka), answered
200 with no redirect. A GET (a person's click, or a link scanner following every URL in a message) changes
nothing: it shows a small page whose button POSTs. The token carries company, learner and list under an HMAC
(security/unsubscribe.py); a token that is not ours is answered 404, the same for a forged one and one
altered to name another company or learner. Unsigned like /verify, and rate limited per client (api.public).
"""

from __future__ import annotations

import html
import logging
from typing import Literal

from aiohttp import web

from api.bodies import read_body
from api.certificates import public_page
from api.errors import ApiError
from api.state import state_of
from schemas.events.suppression import RecipientUnsubscribed
from security.unsubscribe import MAX_TOKEN_LENGTH, UnsubscribeToken, read_token

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
MAX_FORM_BYTES = 1024  # "List-Unsubscribe=One-Click", or the confirmation page's one field
ONE_CLICK = "List-Unsubscribe=One-Click"


def _token(request: web.Request) -> UnsubscribeToken | None:
    raw = request.match_info["token"]
    secret = state_of(request).settings.unsubscribe_key()
    return read_token(secret, raw) if len(raw) <= MAX_TOKEN_LENGTH else None


def _not_ours() -> web.Response:
    return public_page("Link not valid", "<p>This unsubscribe link is not valid. Nothing was changed.</p>", 404)


@routes.get("/u/{token}")
async def confirm_page(request: web.Request) -> web.Response:
    token = _token(request)
    if token is None:
        return _not_ours()
    # The form posts to this same URL; no cookie or session is involved, so there is nothing to forge.
    body = (f"<p>Stop receiving <strong>{html.escape(token.list_id)}</strong> messages?</p>"
            "<form method='post'><input type='hidden' name='confirm' value='yes'>"
            "<button type='submit'>Unsubscribe</button></form>")
    return public_page("Unsubscribe", body, 200)


@routes.post("/u/{token}")
async def unsubscribe(request: web.Request) -> web.Response:
    token = _token(request)
    if token is None:
        return _not_ours()
    try:  # whole and within a deadline: a client trickling its body holds no connection open for long
        body = await read_body(request, limit=MAX_FORM_BYTES, what="unsubscribe requests",
                               timeout=state_of(request).settings.api_body_timeout)
    except ApiError as exc:
        return public_page("Not unsubscribed", f"<p>{html.escape(exc.message)}. Nothing was changed.</p>", exc.status)
    form = body.decode("utf-8", "replace")
    method: Literal["one-click", "confirmation-page"] = "one-click" if ONE_CLICK in form else "confirmation-page"
    event = RecipientUnsubscribed(company_id=token.company_id, userid=token.userid, list_id=token.list_id,
                                  method=method)
    # Acknowledged before we answer: a 200 means the unsubscribe is in the log (503 from json_errors otherwise).
    await state_of(request).publisher.send_and_wait(event)
    log.info("unsubscribed: company %s user %s list %s (%s)", token.company_id, token.userid, token.list_id, method)
    return public_page("Unsubscribed", f"<p>You will no longer receive <strong>{html.escape(token.list_id)}"
                                       "</strong> messages.</p>", 200)
