"""Every 4xx/5xx the API gives is JSON ``{"error": {"code": ..., "message": ...}}``, with a code a client can match."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Any

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from eventlog.publisher import BrokerUnavailable
from resilience.dependencies import DEPENDENCIES
from resilience.reasons import one_line, reason
from security.seen import SeenUnavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer the client gets as JSON; ``extra`` adds fields next to code and message (e.g. problems)."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds, sent as Retry-After (a 503 while a dependency is down)
        self.extra = extra

    def response(self) -> web.Response:
        response = error_response(self.status, self.code, self.message, **self.extra)
        if self.retry_after is not None:
            response.headers["Retry-After"] = str(self.retry_after)
        return response


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return json_response({"error": {"code": code, "message": message, **extra}}, status=status)


def _default(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_response(data: Any, *, status: int = 200) -> web.Response:
    """JSON with timestamps as ISO 8601 text."""
    return web.Response(text=json.dumps(data, default=_default), status=status, content_type="application/json")


# aiohttp's own refusals (unknown route, wrong method, body over client_max_size) get our shape and a code.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 400: "bad_request"}

MAX_BODY = web.AppKey("max_body", int)
RETRY_AFTER = web.AppKey("retry_after", int)  # seconds a client is told to wait while a dependency is down
# The name health and /metrics give the shared replay store (security.seen): while it cannot be used, every
# signed request and webhook is refused with a 503 (database_unavailable or replay_store_unavailable).
REPLAY_STORE = "replay-store"
REPLAY_STORE_REFUSES = "signed requests and webhooks are refused (503)"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except BrokerUnavailable as exc:
        DEPENDENCIES.lost("kafka", str(exc))
        return ApiError(503, "broker_unavailable", "the request could not be handed to Kafka in time; retry later",
                        retry_after=request.app[RETRY_AFTER]).response()
    except SeenUnavailable as exc:
        # The replay memory (Postgres) cannot be asked: a signed request or webhook it cannot check is never
        # admitted. Health says so too (its check of the store runs in the background).
        why = one_line(exc)
        DEPENDENCIES.lost(REPLAY_STORE, f"{why}; {REPLAY_STORE_REFUSES}")
        if exc.database_down:  # the same answer as every other request that needs Postgres
            DEPENDENCIES.lost("postgres", why)
            return ApiError(503, "database_unavailable", "the database is unavailable for a moment; retry later",
                            retry_after=request.app[RETRY_AFTER]).response()
        return ApiError(503, "replay_store_unavailable", "signed requests cannot be checked for replays at the "
                        "moment; retry later", retry_after=request.app[RETRY_AFTER]).response()
    except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
        # Postgres is down or restarting: say so, and when to come back; the pool reconnects by itself.
        DEPENDENCIES.lost("postgres", reason(exc))
        return ApiError(503, "database_unavailable", "the read models are unavailable for a moment; retry later",
                        retry_after=request.app[RETRY_AFTER]).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
        message = exc.reason if exc.status != 413 else (
            f"the body is larger than the limit of {request.app[MAX_BODY]} bytes")
        return error_response(exc.status, code, message)
    except Exception:
        # Never echo internals (they may quote request data); the log has the traceback.
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal_error", "the request could not be completed")
