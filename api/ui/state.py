"""What every UI handler shares: the UI's state on the application, who is signed in, rendering a page."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from multidict import MultiDict

from api.state import STATE, ApiState
from api.ui.feeds import JobFeeds
from api.ui.sessions import LoginThrottle, Session, Sessions, check_csrf, read_form
from api.ui.views import NOTICES, PREFIX

COOKIE = "offload_ui"


@dataclass
class UiState:
    sessions: Sessions
    templates: jinja2.Environment
    feeds: JobFeeds
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # set on shutdown: live streams end at once


UI_STATE = web.AppKey("ui_state", UiState)


def ui_of(request: web.Request) -> UiState:
    return request.app[UI_STATE]


def admin_secrets(state: ApiState) -> dict[str, str]:
    return {key_id: key.secret.get_secret_value() for key_id, key in state.settings.api_keys.items()
            if key.company_id is None}


def current_session(request: web.Request) -> Session | None:
    return ui_of(request).sessions.read(request.cookies.get(COOKIE), admin_secrets(request.app[STATE]))


def require(request: web.Request) -> Session:
    session = current_session(request)
    if session is None:
        target = request.path_qs if request.method == "GET" else f"{PREFIX}/jobs"
        raise web.HTTPSeeOther(f"{PREFIX}/login?{urlencode({'next': target})}")
    return session


def same_origin(request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text="cross-origin request refused")


async def require_post(request: web.Request) -> tuple[Session, MultiDict[str]]:
    """A signed-in admin, a same-origin request and the right CSRF token; returns the (small) form."""
    session = require(request)
    same_origin(request)
    form = await read_form(request, request.app[STATE].settings.ui_max_form_bytes)
    check_csrf(form.get("csrf_token"), session)
    return session, form


def render(request: web.Request, template: str, session: Session | None, status: int = 200,
           **context: Any) -> web.Response:
    notice = NOTICES.get(request.query.get("notice", ""))
    html = ui_of(request).templates.get_template(template).render(
        session=session, csrf_token=session.csrf if session else "", notice=notice, path=request.path,
        **context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def int_param(request: web.Request, name: str, default: int | None = None, high: int = 10**9) -> int | None:
    raw = request.query.get(name, "")
    # ASCII digits only ("²".isdigit() is true), and few of them: int() refuses more than 4,300 digits.
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 and int(raw) <= high else default
