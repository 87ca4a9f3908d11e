"""Server-sent events for the live job page: ``progress`` whenever the job changes, ``history`` for each new
audit-log row of the job (its id as the event id, so a reconnect resumes after it).

The reads come from the job's shared feed (api/ui/feeds.py): one poll loop per job, however many tabs watch.
A stream itself reads only the history it missed when it connects.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from api.state import ApiState
from api.ui.feeds import JobFeeds, Message
from api.ui.pages import load_history, load_job
from api.ui.state import current_session, ui_of
from api.ui.views import PREFIX, live

routes = web.RouteTableDef()
STREAM_MAX_SECONDS = 3600  # a stream ends after an hour; EventSource reconnects by itself
KEEP_ALIVE_SECONDS = 15
SESSION_CHECK_SECONDS = 1.0  # how soon a removed key, a rotated key or an expired session ends a stream


def job_feeds(state: ApiState) -> JobFeeds:
    """The feeds of one API application, reading through its read store."""

    async def read_job(job_id: str) -> dict | None:
        job = await load_job(state, job_id)
        return live(job) if job is not None else None

    async def read_history(job_id: str, after: int) -> list[dict]:
        return await load_history(state, job_id, after)

    return JobFeeds(read_job, read_history)


def _event(message: Message) -> bytes:
    kind, data = message
    if kind == "progress":
        return f"event: progress\ndata: {data}\n\n".encode()
    return f"id: {data['id']}\nevent: history\ndata: {json.dumps(data)}\n\n".encode()


async def _next(queue: asyncio.Queue[Message]) -> Message | None:
    """The next message, or None after SESSION_CHECK_SECONDS without one (time to re-check the session)."""
    try:
        return await asyncio.wait_for(queue.get(), timeout=SESSION_CHECK_SECONDS)
    except TimeoutError:
        return None


async def _pump(request: web.Request, response: web.StreamResponse, queue: asyncio.Queue[Message],
                after: int) -> None:
    ui = ui_of(request)
    started = last_write = time.monotonic()
    while time.monotonic() - started < STREAM_MAX_SECONDS and not ui.closing.is_set():
        message = await _next(queue)
        if message is not None and message[0] == "closed":
            return
        if current_session(request) is None:  # the key was removed or rotated, or the session expired
            await response.write(b"event: signed-out\ndata: {}\n\n")
            return
        if message is not None and (message[0] == "progress" or message[1]["id"] > after):
            await response.write(_event(message))
            last_write = time.monotonic()
            after = message[1]["id"] if message[0] == "history" else after
        elif time.monotonic() - last_write > KEEP_ALIVE_SECONDS:
            await response.write(b": keep-alive\n\n")
            last_write = time.monotonic()


@routes.get(PREFIX + "/jobs/{job_id}/stream")
async def job_stream(request: web.Request) -> web.StreamResponse:
    if current_session(request) is None:
        raise web.HTTPUnauthorized(text="sign in first")
    feeds = ui_of(request).feeds
    job_id = request.match_info["job_id"][:128]
    last_id = request.headers.get("Last-Event-ID") or request.query.get("after", "0")
    after = int(last_id) if last_id.isascii() and last_id.isdigit() and len(last_id) <= 18 else 0
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    queue = feeds.subscribe(job_id, after)
    try:
        for item in await feeds.backlog(job_id, after):
            await response.write(_event(("history", item)))
            after = item["id"]
        await _pump(request, response, queue, after)
    except ConnectionResetError:
        pass  # the browser went away
    finally:
        feeds.unsubscribe(job_id, queue)
    return response
