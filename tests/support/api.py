"""The API in a real server on a free loopback port (own thread and event loop), and a client that signs.

The server runs in a thread so the tests stay plain synchronous code, like the other integration tests, and
so other programs (php-cli, the benchmark) can talk to it over TCP.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from aiohttp import web
from pydantic import SecretStr

from api.app import create_app
from config.settings import ApiKey, Settings
from security.signing import sign
from tests.support.stack import REPO, free_port, settings_env

PUBLIC_CALLBACK = "https://93.184.215.14/local/offload/callback.php"  # a literal public address: needs no DNS


def api_keys(**keys: tuple[str, int | None]) -> dict[str, ApiKey]:
    """``api_keys(k7=(secret, 7), ops=(secret, None))`` -> settings' api_keys."""
    return {key_id: ApiKey(secret=SecretStr(secret), company_id=company) for key_id, (secret, company) in keys.items()}


def without_api_keys(settings: Settings) -> Settings:
    """The worker/projector need no keys (and tests.support.stack cannot pass a dict through the environment)."""
    return settings.model_copy(update={"api_keys": {}})


class ApiServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api-server", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            # A deadline, not an estimate: the runner waits up to its shutdown_timeout for requests still in
            # flight, then the app's cleanup (producer, pools: a few seconds each after a dependency outage).
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=120)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _start(self) -> None:
        # aiohttp's default grace for requests in flight at shutdown is 60 s, as long as the wait above was:
        # a test server stops with the test, so 5 s is grace enough.
        self._runner = web.AppRunner(create_app(self.settings), access_log=None, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@dataclass
class Reply:
    status: int
    body: Any
    raw: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def code(self) -> str | None:
        return self.body.get("error", {}).get("code") if isinstance(self.body, dict) else None


class SignedClient:
    """Signs every request the way Moodle's client does; keyword arguments let a test break one part."""

    def __init__(self, base_url: str, key_id: str, secret: str) -> None:
        self.base_url = base_url
        self.key_id = key_id
        self.secret = secret

    def headers(self, method: str, path: str, body: bytes, *, timestamp: int | None = None,
                nonce: str | None = None, secret: str | None = None, key_id: str | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or secrets.token_urlsafe(18)
        return {
            "X-Offload-Key-Id": key_id or self.key_id,
            "X-Offload-Timestamp": ts,
            "X-Offload-Nonce": nonce,
            "X-Offload-Signature": sign(secret or self.secret, method, path, ts, nonce, body),
            "Content-Type": "application/json",
        }

    def request(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
                **signing: Any) -> Reply:
        data = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
        sent = headers if headers is not None else self.headers(method, path, data, **signing)
        return send(self.base_url, method, path, data, sent)

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.request("PUT", path, body, **kw)


def send(base_url: str, method: str, path: str, data: bytes, headers: dict[str, str]) -> Reply:
    request = urllib.request.Request(base_url + path, data=data if method != "GET" else None, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            status, answered = response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status, answered = exc.code, dict(exc.headers)
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return Reply(status, parsed, raw, answered)


def raw_exchange(port: int, head: bytes, body_parts: list[bytes], timeout: float = 30) -> bytes:
    """Write a request by hand (e.g. a Content-Length far larger than what follows) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            for part in body_parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the body was all sent: the point of the test
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


class ApiProcess:
    """``python -m api`` on a free port, configured from the environment only (as a deployment runs it);
    ready once its health endpoint answers, stopped with SIGTERM on exit (``returncode`` then says how)."""

    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.settings, self.log_path, self.extra_env, self.args = settings, log_path, extra_env or {}, args
        self.port = free_port()
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
        env.update(settings_env(self.settings))
        env.update(self.extra_env)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen([sys.executable, "-m", "api", "--port", str(self.port), *self.args],
                                          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not self._answers():
                assert self._proc.poll() is None, self.log_path.read_text()
                assert time.monotonic() < deadline, "the API did not answer within 60 s"
                time.sleep(0.2)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _answers(self) -> bool:
        try:
            return send(self.base_url, "GET", "/api/v1/health", b"", {}).status == 200
        except OSError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
            self.returncode = self._proc.wait(timeout=30)


