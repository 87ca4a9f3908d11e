"""A stand-in for Moodle's callback endpoint: a real aiohttp server on loopback (own thread and event loop) that
verifies each callback's signature as Moodle would and can be "down" (answering 503) for a while."""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web

from security.signing import sign


@dataclass(frozen=True)
class Received:
    """One request as it arrived, with whether its signature verified and what was answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    valid: bool
    answered: int
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class MoodleReceiver:
    """``down_for``: answer 503 to that many requests first (Moodle being down), then 200."""

    def __init__(self, secrets: dict[str, str], *, down_for: int = 0, window: int = 300) -> None:
        self.secrets = secrets
        self.down_for = down_for
        self.window = window
        self.received: list[Received] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="moodle-receiver", daemon=True)
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/local/offload/callback.php") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def verify(self, headers: dict[str, str], path: str, body: bytes) -> bool:
        """What OffloadClient::verifyCallback does: key by id, timestamp within the window, constant-time HMAC."""
        lower = {k.lower(): v for k, v in headers.items()}
        secret = self.secrets.get(lower.get("x-offload-key-id", ""))
        timestamp = lower.get("x-offload-timestamp", "")
        nonce = lower.get("x-offload-nonce", "")
        if secret is None or not timestamp.isdigit() or not nonce or abs(time.time() - int(timestamp)) > self.window:
            return False
        expected = sign(secret, "POST", path, timestamp, nonce, body)
        return hmac.compare_digest(expected, lower.get("x-offload-signature", "").lower())

    def delivered(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.answered == 200]

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        valid = self.verify(headers, request.raw_path, body)
        with self._lock:
            down = self.down_for > 0
            if down:
                self.down_for -= 1
            answered = 503 if down else (200 if valid else 401)
            self.received.append(Received(request.raw_path, headers, body, valid, answered, time.time()))
        return web.json_response({"ok": answered == 200}, status=answered)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
