"""The middleware that lets only signed, fresh, first-time requests through, refusing big bodies unread."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from api.errors import ApiError, Handler
from api.state import BODY, CALLER, state_of
from security.signing import AuthError, SeenUnavailable

log = logging.getLogger(__name__)

# Served to anyone: the API description and a liveness probe carry nothing about any company; certificate
# verification and local certificate files are reached from a QR code or a link (see api/certificates.py).
UNSIGNED_PATHS = frozenset({"/api/v1/openapi.yaml", "/api/v1/health"})
# Provider webhooks carry the provider's own signature, checked in api/webhooks/signatures.py.
# One-click unsubscribe links (/u/<token>) carry their own HMAC (security/unsubscribe.py).
UNSIGNED_PREFIXES = ("/verify/", "/certificates/", "/webhooks/", "/u/")


@web.middleware
async def signed_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in UNSIGNED_PATHS or request.path.startswith(UNSIGNED_PREFIXES):
        return await handler(request)
    state = state_of(request)
    try:
        # Headers first (key id, timestamp window): a stranger's 30 MB body is refused before it is read.
        signed = state.verifier.check_headers(request.headers)
        limit = state.settings.api_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, "body_too_large", f"the body is larger than the limit of {limit} bytes")
        # aiohttp stops at client_max_size even without a Content-Length, but puts no deadline on the read.
        try:
            body = await asyncio.wait_for(request.read(), timeout=state.settings.api_body_timeout)
        except TimeoutError:
            raise ApiError(408, "body_timeout", f"the body did not arrive within "
                                                f"{state.settings.api_body_timeout:.0f} s") from None
        caller = await state.verifier.admit(signed, request.method, request.raw_path, body)
    except SeenUnavailable as exc:
        # Never admitted unchecked: json_errors answers 503 database_unavailable with Retry-After.
        log.error("replay store unavailable, %s %s refused: %s", request.method, request.path, exc)
        raise
    except AuthError as exc:
        # The key id is logged, never a secret, a signature or the body.
        log.warning("refused %s %s: %s (key id %r)", request.method, request.path, exc.code,
                    request.headers.get("X-Offload-Key-Id", "")[:64])
        raise ApiError(401, exc.code, exc.message) from None
    request[CALLER] = caller
    request[BODY] = body
    return await handler(request)
