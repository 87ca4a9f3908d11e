"""What the local SendGrid and Mailgun API servers share: an aiohttp app on its own thread and event loop (so
worker subprocesses can reach it), the record of every call and of every message delivered, injected faults
and an account rate limit. See ``devtools.provider_servers`` for what each server checks."""


from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
SENDGRID_MAX_BYTES = 30 * 1024 * 1024
MAILGUN_MAX_BYTES = 25 * 1024 * 1024


@dataclass(frozen=True)
class Delivered:
    """One recipient's message as the provider would send it."""

    to: str
    name: str
    subject: str
    text: str
    html: str
    message_id: str | None  # the Message-ID header we asked for (SendGrid) / recipient variable (Mailgun)
    call: int  # which accepted call carried it
    at: float  # time.monotonic() when the call arrived


@dataclass
class Call:
    status: int
    recipients: int
    at: float
    content_type: str
    size: int = 0  # request body bytes
    port: int = 0  # which of the server's ports it came in on (see ProviderServer.add_port)


@dataclass
class _Fault:
    status: int
    times: int
    headers: dict[str, str]
    body: Any


@dataclass
class _State:
    delivered: list[Delivered] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)
    rejected: set[str] = field(default_factory=set)
    limit: tuple[int, float] | None = None
    exhaust: float | None = None  # the next accepted answer says the window is used up for this many seconds
    window: list[tuple[float, int]] = field(default_factory=list)
    accepted_calls: int = 0


class ProviderServer:
    """An aiohttp app served from its own thread and event loop, so subprocess workers can reach it."""

    name = "provider"

    def __init__(self) -> None:
        self.state = _State()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"{self.name}-server")
        self.port = 0

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)  # type: ignore[union-attr]
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def add_port(self) -> str:
        """One more port onto the same account (same state, same rate limit); returns its base URL. Each call
        records the port it came in on, so a test can tell which of several clients sent it."""

        async def open_site() -> int:
            assert self._runner is not None
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        port = asyncio.run_coroutine_threadsafe(open_site(), self._loop).result(10)
        return f"http://127.0.0.1:{port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- what the test sets up -------------------------------------------------------------------------
    def inject(self, status: int, *, times: int = 1, headers: dict[str, str] | None = None, body: Any = None) -> None:
        with self._lock:
            self.state.faults.append(_Fault(status, times, dict(headers or {}), body))

    def reject(self, address: str) -> None:
        with self._lock:
            self.state.rejected.add(address.lower())

    def exhaust_window(self, seconds: float) -> None:
        """The next accepted call answers ``X-RateLimit-Remaining: 0`` with a reset ``seconds`` from now."""
        with self._lock:
            self.state.exhaust = seconds

    def rate_limit(self, recipients: int, per: float = 1.0) -> None:
        with self._lock:
            self.state.limit = (recipients, per)

    # --- what the test reads ---------------------------------------------------------------------------
    @property
    def delivered(self) -> list[Delivered]:
        with self._lock:
            return list(self.state.delivered)

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self.state.calls)

    def by_recipient(self) -> dict[str, list[Delivered]]:
        out: dict[str, list[Delivered]] = {}
        for d in self.delivered:
            out.setdefault(d.to, []).append(d)
        return out

    # --- shared checks ---------------------------------------------------------------------------------
    def _fault(self) -> _Fault | None:
        with self._lock:
            if not self.state.faults:
                return None
            fault = self.state.faults[0]
            fault.times -= 1
            if fault.times <= 0:
                self.state.faults.pop(0)
            return fault

    def _over_limit(self, recipients: int, now: float) -> float | None:
        """Seconds until the window has room, when this call would go past the rate limit."""
        with self._lock:
            if self.state.limit is None:
                return None
            allowed, per = self.state.limit
            self.state.window = [(t, n) for t, n in self.state.window if now - t < per]
            if sum(n for _, n in self.state.window) + recipients > allowed:
                return per - (now - self.state.window[0][0]) if self.state.window else per
            self.state.window.append((now, recipients))
            return None

    def _record(self, request: web.Request, status: int, recipients: int, at: float, content_type: str,
                size: int = 0) -> None:
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        port = int(sockname[1]) if sockname else 0
        with self._lock:
            self.state.calls.append(Call(status, recipients, at, content_type, size, port))

    def _accept(self, messages: list[Delivered]) -> None:
        with self._lock:
            self.state.delivered.extend(messages)

    def _next_call(self) -> int:
        with self._lock:
            self.state.accepted_calls += 1
            return self.state.accepted_calls

    def _rate_headers(self, wait: float | None = None) -> dict[str, str]:
        if wait is None:
            with self._lock:
                wait, self.state.exhaust = self.state.exhaust, None
        reset = int(time.time() + (wait if wait is not None else 1.0)) + (1 if wait else 0)
        return {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0" if wait else "599",
                "X-RateLimit-Reset": str(reset)}
