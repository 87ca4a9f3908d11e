"""The API process: an aiohttp application that writes only by producing events and reads only Postgres.

aiohttp because Faust already brings it (no second web stack, one event loop model with aiokafka and
psycopg's async pool), and because it lets us refuse an oversized body before reading it (client_max_size
plus a Content-Length check in the signing middleware).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError

from api import (
    certificates,
    chunked,
    companies,
    health,
    jobs,
    metrics,
    public,
    suppressions,
    templates,
    ui,
    unsubscribe,
    webhooks,
)
from api.auth import signed_requests
from api.errors import MAX_BODY, RETRY_AFTER, json_errors, json_response
from api.state import STATE, ApiState
from api.store import ReadStore
from api.submissions import Submissions
from config.settings import Settings
from eventlog.publisher import EventPublisher
from security.seen import PostgresSeen
from security.signing import RequestVerifier

log = logging.getLogger(__name__)
SHUTDOWN_STEP_S = 10.0
OPENAPI = Path(__file__).with_name("openapi.yaml")


def create_app(settings: Settings) -> web.Application:
    # client_max_size: aiohttp refuses a larger body while streaming it, Content-Length or not.
    # Rate limit before signatures: the public routes are limited per client before any work is done.
    app = web.Application(middlewares=[json_errors, public.rate_limited, ui.exempt_from_signing(signed_requests)],
                          client_max_size=settings.api_max_body_bytes)
    source = f"urn:manireports:offload:api:{settings.app_id}"
    publisher = EventPublisher(settings, source=source, ack_timeout=settings.api_handoff_timeout)
    store = ReadStore(settings)
    app[STATE] = ApiState(
        settings=settings,
        verifier=RequestVerifier(settings.api_keys, window=settings.api_timestamp_window,
                                 seen=PostgresSeen(store.pool, settings.api_seen_schema)),
        publisher=publisher,
        store=store,
        submissions=Submissions(publisher, store, source=source, handoff_timeout=settings.api_handoff_timeout,
                                retry_after=settings.api_retry_after),
    )
    app[MAX_BODY] = settings.api_max_body_bytes
    public.setup(app)  # rate limit of /verify, /certificates, /ui/login per client address
    app[RETRY_AFTER] = settings.api_retry_after
    app.add_routes(jobs.routes)
    chunked.setup(app)  # /api/v1/jobs/{id}/recipients and /commit: jobs sent in parts
    app.add_routes(companies.routes)
    app.add_routes(templates.routes)
    app.add_routes(certificates.routes)  # public: /verify/{code}, /certificates/{key}
    app.add_routes(suppressions.routes)  # a company's suppression list: list, add, remove
    app.add_routes(unsubscribe.routes)  # public: one-click unsubscribe /u/{token}
    health.setup(app)  # /api/v1/health: ready or degraded, with the reason
    app.router.add_get("/api/v1/openapi.yaml", _openapi)
    ui.setup(app)  # /ui/: admin monitoring pages (session cookie)
    metrics.setup(app)  # /metrics: Prometheus (optional bearer token)
    # /webhooks/*: provider signatures, not ours; the same replay store as signed requests
    webhooks.setup(app, settings, publisher, store, seen=app[STATE].verifier.seen)
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
    # Start even while Postgres or Kafka is down: health says degraded, requests that need them answer 503,
    # and the pool and the producer connect once they are back.
    state = app[STATE]
    await state.store.open()
    try:
        await asyncio.wait_for(state.publisher.start(), state.settings.api_handoff_timeout)
    except (TimeoutError, KafkaError, OSError) as exc:
        log.warning("Kafka unavailable at start-up (%s): job hand-offs answer 503 until it is back", exc)


async def _stop(app: web.Application) -> None:
    # Each step has a deadline: a producer still holding records for a broker that is gone would otherwise wait
    # as long as its retries last, and those requests were answered 503 already.
    state = app[STATE]
    await _within(SHUTDOWN_STEP_S, "the Kafka producer", state.publisher.stop())
    await _within(SHUTDOWN_STEP_S, "the Postgres pool", state.store.close())


async def _within(seconds: float, what: str, closing: Coroutine[Any, Any, None]) -> None:
    try:
        await asyncio.wait_for(closing, seconds)
    except TimeoutError:
        log.warning("%s did not close within %.0f s at shutdown; left behind", what, seconds)


async def _openapi(request: web.Request) -> web.StreamResponse:
    if not OPENAPI.exists():
        return json_response({"error": {"code": "not_found", "message": "no API description"}}, status=404)
    return web.FileResponse(OPENAPI, headers={"Content-Type": "application/yaml"})


def run_api(settings: Settings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """``offload api``: serve until SIGINT/SIGTERM."""
    web.run_app(create_app(settings), host=host, port=port, print=lambda *a: None,
                access_log_format='%a "%r" %s %b %Tf')
