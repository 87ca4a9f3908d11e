"""One poll loop per watched job, shared by every open live page of that job.

A job page keeps a server-sent-events stream open. Reading the job row, its error summary, its cancel flag and
its new history for every open tab every 0.5 s would multiply the load on Postgres by the number of tabs; here
one task per job reads once per tick and hands what changed to every subscriber's queue. The task starts with
the first subscriber and ends when the last one leaves.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

log = logging.getLogger(__name__)

INTERVAL = 0.5  # seconds between two reads of a running job
FINISHED_INTERVAL = 2.0  # a finished job changes only if someone retries it
MAX_BACKOFF = 10.0  # Postgres unavailable: read less often, up to this
QUEUE_SIZE = 1000  # a subscriber this far behind is dropped (its EventSource reconnects and resumes)

Message = tuple[str, Any]  # ("progress", json text) | ("history", item) | ("closed", None)
ReadJob = Callable[[str], Awaitable[dict[str, Any] | None]]  # the live view of a job, or None
ReadHistory = Callable[[str, int], Awaitable[list[dict[str, Any]]]]  # history items after an id


@dataclass(eq=False)
class JobFeed:
    job_id: str
    subscribers: set[asyncio.Queue[Message]] = field(default_factory=set)
    progress: str | None = None  # the latest progress, sent at once to a new subscriber
    last_history: int = 0
    polls: int = 0
    task: asyncio.Task[None] | None = None


class JobFeeds:
    """The live feeds of the jobs someone is watching, keyed by job id."""

    def __init__(self, read_job: ReadJob, read_history: ReadHistory, *, interval: float = INTERVAL,
                 finished_interval: float = FINISHED_INTERVAL) -> None:
        self._read_job = read_job
        self._read_history = read_history
        self.interval = interval
        self.finished_interval = finished_interval
        self.feeds: dict[str, JobFeed] = {}
        self.loops_started = 0

    def subscribe(self, job_id: str, after: int) -> asyncio.Queue[Message]:
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = JobFeed(job_id, last_history=after)
        queue: asyncio.Queue[Message] = asyncio.Queue(QUEUE_SIZE)
        feed.subscribers.add(queue)
        if feed.progress is not None:
            queue.put_nowait(("progress", feed.progress))
        if feed.task is None or feed.task.done():
            self.loops_started += 1
            feed.task = asyncio.create_task(self._run(feed), name=f"ui-feed:{job_id}")
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[Message]) -> None:
        feed = self.feeds.get(job_id)
        if feed is not None:
            feed.subscribers.discard(queue)

    async def backlog(self, job_id: str, after: int) -> list[dict[str, Any]]:
        """History a new subscriber missed (one read when it connects, not per tick)."""
        return await self._read_history(job_id, after)

    async def close(self) -> None:
        """Shutdown: every stream ends at once, every loop stops."""
        feeds = list(self.feeds.values())
        for feed in feeds:
            for queue in list(feed.subscribers):
                _offer(queue, ("closed", None))
            feed.subscribers.clear()
            if feed.task is not None:
                feed.task.cancel()
        await asyncio.gather(*(f.task for f in feeds if f.task is not None), return_exceptions=True)
        self.feeds.clear()

    async def _run(self, feed: JobFeed) -> None:
        delay = self.interval
        try:
            while feed.subscribers:
                feed.polls += 1
                try:
                    job = await self._read_job(feed.job_id)
                    history = await self._read_history(feed.job_id, feed.last_history)
                except (psycopg.Error, OSError, TimeoutError) as exc:
                    delay = min(delay * 2, MAX_BACKOFF)
                    log.warning("live feed of job %s: read failed (%s); next try in %.1f s", feed.job_id, exc, delay)
                except Exception:
                    delay = min(delay * 2, MAX_BACKOFF)
                    log.exception("live feed of job %s: read failed; next try in %.1f s", feed.job_id, delay)
                else:
                    self._publish(feed, job, history)
                    finished = job is not None and job["status"] in ("completed", "rejected", "cancelled")
                    delay = self.finished_interval if finished else self.interval
                await asyncio.sleep(delay)
        finally:
            if not feed.subscribers and self.feeds.get(feed.job_id) is feed:
                del self.feeds[feed.job_id]

    def _publish(self, feed: JobFeed, job: dict[str, Any] | None, history: list[dict[str, Any]]) -> None:
        messages: list[Message] = []
        if job is not None:
            data = json.dumps(job, default=str)
            if data != feed.progress:
                feed.progress = data
                messages.append(("progress", data))
        for item in history:
            feed.last_history = max(feed.last_history, item["id"])
            messages.append(("history", item))
        for queue in list(feed.subscribers):
            for message in messages:
                if not _offer(queue, message):
                    feed.subscribers.discard(queue)
                    _drain_and_close(queue)
                    break


def _offer(queue: asyncio.Queue[Message], message: Message) -> bool:
    try:
        queue.put_nowait(message)
    except asyncio.QueueFull:
        return False
    return True


def _drain_and_close(queue: asyncio.Queue[Message]) -> None:
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(("closed", None))
