"""Reading a request body whole, within a size limit and a deadline, for the routes that read their own."""

from __future__ import annotations

import asyncio

from aiohttp import web

from api.errors import ApiError


async def read_body(request: web.Request, *, limit: int, timeout: float, what: str) -> bytes:
    """The whole body, at most ``limit`` bytes, within ``timeout`` s: 413 body_too_large / 408 body_timeout.

    Read to the end: one ``content.read(n)`` returns only what has arrived so far, which cuts a body sent in
    several TCP segments short. A declared length over the limit is refused before anything is read."""
    too_large = ApiError(413, "body_too_large", f"{what} are limited to {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large

    async def read_all() -> bytes:
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read_all(), timeout)
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"the body did not arrive within {timeout:.0f} s") from None
