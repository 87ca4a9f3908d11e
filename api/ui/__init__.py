"""The admin monitoring UI, served by the API process under /ui/: server-rendered pages and a little JS.

Reads the Postgres read models through the read store like the rest of the API; writes only by producing
events (JobRetryRequested, JobCancelled, CompanySettingsChanged), exactly as api/jobs.py and api/companies.py do.

- ``sessions``: session cookies (HMAC-SHA256 under ``ui_session_secret``), CSRF tokens, the sign-in throttle,
  the small-form reader; ``auth``: the sign-in and sign-out routes.
- ``pages``: the GET pages; ``actions``: the CSRF-protected POSTs; ``views``: templates and formatting.
- ``feeds`` and ``live``: the live job page (server-sent events fed by one shared poll loop per job).

Every POST needs the session's CSRF token and, when the browser sends an Origin, our own origin.
No page ever renders a secret.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from api.errors import Handler
from api.state import STATE
from api.ui import actions, auth, live, pages, suppressions, template_pages
from api.ui.sessions import Sessions
from api.ui.state import UI_STATE, UiState
from api.ui.views import HERE, PREFIX, templates

log = logging.getLogger(__name__)


def exempt_from_signing(middleware: Callable[..., Awaitable[web.StreamResponse]]):
    """Wrap the API's request-signing middleware so /ui/ (session cookie) and /metrics (its own optional
    bearer token) are not asked for a Moodle request signature; every other path is unchanged."""

    @web.middleware
    async def signed_unless_ui(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path == PREFIX or path.startswith(PREFIX + "/") or path == "/metrics":
            return await handler(request)
        return await middleware(request, handler)

    return signed_unless_ui


def setup(app: web.Application) -> None:
    """Register the UI's routes and state on the API application (after app[STATE] is set)."""
    settings = app[STATE].settings
    secret = settings.ui_session_secret
    if secret is None:
        if any(k.company_id is None for k in settings.api_keys.values()):
            log.warning("ui_session_secret is not set: UI sessions use a random secret and end when this "
                        "process restarts")
        key = secrets.token_bytes(32)
    else:
        key = secret.get_secret_value().encode()
    secure = settings.ui_secure_cookies if settings.ui_secure_cookies is not None \
        else settings.environment == "production"
    app[UI_STATE] = UiState(
        sessions=Sessions(key, hours=settings.ui_session_hours, secure=secure),
        templates=templates(),
        feeds=live.job_feeds(app[STATE]),
    )
    for module in (auth, pages, actions, suppressions, live, template_pages):
        app.add_routes(module.routes)
    app.router.add_static(f"{PREFIX}/static", HERE / "static", append_version=False)
    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(_end_streams)


async def _end_streams(app: web.Application) -> None:
    ui = app[UI_STATE]
    ui.closing.set()
    await ui.feeds.close()


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if not (request.path == PREFIX or request.path.startswith(PREFIX + "/")):
        return
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if not request.path.startswith(f"{PREFIX}/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
