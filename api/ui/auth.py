"""Signing in and out of the admin UI with an admin API key (``company_id`` null in ``OFFLOAD_API_KEYS``).

Sign-in is throttled per client address (``api.public.client_address``: the TCP peer, or the client behind a
trusted proxy; an IPv6 client counted by its /64) before its body is read, and the body is a small form read
under a size limit and a deadline.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets

from aiohttp import web

from api.public import LIMITS, client_address, limit_key
from api.state import STATE
from api.ui.sessions import read_form
from api.ui.state import COOKIE, admin_secrets, current_session, render, require_post, same_origin, ui_of
from api.ui.views import PREFIX, safe_next

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
FAILED_SIGN_IN_DELAY = 0.3  # seconds: slows guessing without holding anything


@routes.get(PREFIX)
@routes.get(PREFIX + "/")
async def index(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther(f"{PREFIX}/jobs")


@routes.get(PREFIX + "/login")
async def login_form(request: web.Request) -> web.Response:
    if current_session(request) is not None:
        raise web.HTTPSeeOther(safe_next(request.query.get("next")))
    return render(request, "login.html", None, next=safe_next(request.query.get("next")), error=None)


@routes.post(PREFIX + "/login")
async def login(request: web.Request) -> web.Response:
    same_origin(request)
    ui, state = ui_of(request), request.app[STATE]
    client = client_address(request, state.settings.trusted_proxy_networks())
    # Counted (as a failure until it succeeds) before the body is read: parallel slow attempts all count.
    counted = limit_key(client)  # an IPv6 client by its /64
    # Shared by every API replica (api.public.ReplicaLimits); this process's own while that store is down.
    if not await request.app[LIMITS].begin_sign_in(counted, ui.throttle):
        return render(request, "login.html", None, status=429, next=safe_next(request.query.get("next")),
                      error="Too many failed attempts. Wait a few minutes and try again.")
    form = await read_form(request, state.settings.ui_max_form_bytes)
    key_id, secret = form.get("key_id", "")[:64], form.get("secret", "")[:512]
    target = safe_next(form.get("next", ""))
    expected = admin_secrets(state).get(key_id, "")
    # compare_digest on a dummy too, so an unknown key id costs the same as a wrong secret
    good = hmac.compare_digest(secret.encode(), (expected or secrets.token_hex(16)).encode()) and bool(expected)
    if not good:
        log.warning("UI sign-in refused for key id %r from %s", key_id, client)
        await asyncio.sleep(FAILED_SIGN_IN_DELAY)
        return render(request, "login.html", None, status=401, next=target,
                      error="Sign-in failed: unknown key id, wrong secret, or not an admin key.")
    await request.app[LIMITS].sign_in_succeeded(counted, ui.throttle)
    log.info("UI sign-in by admin key %s from %s", key_id, client)
    response = web.HTTPSeeOther(target)
    response.set_cookie(COOKIE, ui.sessions.issue(key_id, expected), max_age=ui.sessions.seconds, path=PREFIX,
                        httponly=True, samesite="Strict", secure=ui.sessions.secure)
    raise response


@routes.post(PREFIX + "/logout")
async def logout(request: web.Request) -> web.Response:
    await require_post(request)
    response = web.HTTPSeeOther(f"{PREFIX}/login?notice=signed_out")
    response.del_cookie(COOKIE, path=PREFIX)
    raise response
