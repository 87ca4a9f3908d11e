"""The API process: an aiohttp application that writes only by producing events and reads only Postgres.

aiohttp because Faust already brings it (no second web stack, one event loop model with aiokafka and
psycopg's async pool), and because it lets us refuse an oversized body before reading it (client_max_size
plus a Content-Length check in the signing middleware).
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from api import certificates, companies, jobs, metrics, public, ui, webhooks
from api.auth import signed_requests
from api.errors import MAX_BODY, json_errors, json_response
from api.state import STATE, ApiState
from api.store import ReadStore
from api.submissions import Submissions
from config.settings import Settings
from eventlog.publisher import EventPublisher
from security.seen import PostgresSeen
from security.signing import RequestVerifier

log = logging.getLogger(__name__)
OPENAPI = Path(__file__).with_name("openapi.yaml")


def create_app(settings: Settings) -> web.Application:
    # client_max_size: aiohttp refuses a larger body while streaming it, Content-Length or not.
    # Rate limit before signatures: the public routes are limited per client before any work is done.
    app = web.Application(middlewares=[json_errors, public.rate_limited, ui.exempt_from_signing(signed_requests)],
                          client_max_size=settings.api_max_body_bytes)
    source = f"urn:manireports:offload:api:{settings.app_id}"
    publisher = EventPublisher(settings, source=source)
    store = ReadStore(settings)
    app[STATE] = ApiState(
        settings=settings,
        verifier=RequestVerifier(settings.api_keys, window=settings.api_timestamp_window,
                                 seen=PostgresSeen(store.pool, settings.projection_schema)),
        publisher=publisher,
        store=store,
        submissions=Submissions(publisher, store, source=source),
    )
    app[MAX_BODY] = settings.api_max_body_bytes
    public.setup(app)  # rate limit of /verify, /certificates, /ui/login per client address
    app.add_routes(jobs.routes)
    app.add_routes(companies.routes)
    app.add_routes(certificates.routes)  # public: /verify/{code}, /certificates/{key}
    app.router.add_get("/api/v1/health", _health)
    app.router.add_get("/api/v1/openapi.yaml", _openapi)
    ui.setup(app)  # /ui/: admin monitoring pages (session cookie)
    metrics.setup(app)  # /metrics: Prometheus (optional bearer token)
    webhooks.setup(app, settings, publisher, store)  # /webhooks/*: provider signatures, not ours
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    if not settings.api_keys:
        log.warning("no API keys configured (OFFLOAD_API_KEYS): every signed request will be refused")
    if settings.uses_public_code_secret:
        log.warning("OFFLOAD_CERTIFICATE_CODE_SECRET is the public development default: certificate codes "
                    "served by /verify and /certificates can be computed by anyone (workers refuse to issue "
                    "certificates with it outside tests and the dev stack)")
    return app


async def _start(app: web.Application) -> None:
    state = app[STATE]
    await state.store.open()
    await state.publisher.start()


async def _stop(app: web.Application) -> None:
    state = app[STATE]
    await state.publisher.stop()
    await state.store.close()


async def _health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _openapi(request: web.Request) -> web.StreamResponse:
    if not OPENAPI.exists():
        return json_response({"error": {"code": "not_found", "message": "no API description"}}, status=404)
    return web.FileResponse(OPENAPI, headers={"Content-Type": "application/yaml"})


def run_api(settings: Settings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """``offload api``: serve until SIGINT/SIGTERM."""
    web.run_app(create_app(settings), host=host, port=port, print=lambda *a: None,
                access_log_format='%a "%r" %s %b %Tf')
