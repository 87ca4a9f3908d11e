"""Local SendGrid and Mailgun API servers for tests: real HTTP on loopback, strict about requests.

Each checks a call the way the provider's documentation defines it and answers like the provider does:

- SendGrid v3 ``POST /v3/mail/send``: ``Authorization: Bearer <key>`` (else 401 with an ``errors`` list),
  ``Content-Type: application/json``, body ≤ 30 MB (else 413), ``from.email``, 1-1,000 personalizations and
  ≤ 1,000 recipients in all, a subject per personalization or at the top, ``content`` with ``text/plain``
  first and non-empty values, substitutions ≤ 10,000 bytes per personalization, valid addresses (else 400
  naming ``personalizations.N.to.M.email``); accepted: 202, empty body, ``X-Message-Id``. Every answer has
  ``X-RateLimit-Limit/-Remaining/-Reset``.
- Mailgun ``POST /v3/{domain}/messages``: HTTP basic ``api:<key>`` (else 401 ``Forbidden``), a known domain
  (else 404), ``multipart/form-data`` or urlencoded form, ``from``, 1-1,000 ``to``, ``subject``, ``text`` or
  ``html``, ``recipient-variables`` a JSON object, valid addresses (else 400 "to parameter is not a valid
  address"), ≤ 25 MB (else 413); accepted: 200 ``{"id": "<...>", "message": "Queued. Thank you."}``.

Accepted calls are expanded into the message each recipient would get (substitutions / recipient variables
applied) and kept in ``delivered``. ``inject(status, times=…, headers=…)`` makes the next calls fail;
``reject(address)`` refuses an address with 400; ``rate_limit(n, per=1.0)`` answers 429 with
``X-RateLimit-Reset`` once more than ``n`` recipients arrive within ``per`` seconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any, Self
from urllib.parse import parse_qsl

from aiohttp import web

_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
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


class _Server:
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

    def _record(self, status: int, recipients: int, at: float, content_type: str, size: int = 0) -> None:
        with self._lock:
            self.state.calls.append(Call(status, recipients, at, content_type, size))

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


class SendGridServer(_Server):
    name = "sendgrid"

    def __init__(self, api_key: str = "SG.test-key") -> None:
        super().__init__()
        self.api_key = api_key

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v3/mail/send", self._send)

    @staticmethod
    def _errors(status: int, *errors: tuple[str, str | None], headers: dict[str, str] | None = None) -> web.Response:
        body = {"errors": [{"message": m, "field": f, "help": None} for m, f in errors]}
        return web.json_response(body, status=status, headers=headers)

    async def _send(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        raw = await request.read()
        content_type = request.headers.get("Content-Type", "")
        response = self._check(request, raw, content_type, now)
        self._record(response.status, self._count(raw), now, content_type, len(raw))
        return response

    @staticmethod
    def _count(raw: bytes) -> int:
        try:
            return sum(len(p.get("to", [])) for p in json.loads(raw)["personalizations"])
        except (ValueError, KeyError, TypeError, AttributeError):  # not the documented shape: counted as none
            return 0

    def _check(self, request: web.Request, raw: bytes, content_type: str, now: float) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._errors(401, ("The provided authorization grant is invalid, expired, or revoked", None))
        fault = self._fault()
        if fault is not None:
            body = fault.body if fault.body is not None else {"errors": [{"message": f"injected {fault.status}",
                                                                          "field": None, "help": None}]}
            return web.json_response(body, status=fault.status, headers=fault.headers)
        if len(raw) > SENDGRID_MAX_BYTES:
            return self._errors(413, ("Request entity too large", None))
        if not content_type.startswith("application/json"):
            return self._errors(400, ("Content-Type should be application/json.", None))
        try:
            body = json.loads(raw)
        except ValueError:
            return self._errors(400, ("Bad Request", None))
        problems = list(self._problems(body))
        if problems:
            return self._errors(400, *problems)
        recipients = sum(len(p["to"]) for p in body["personalizations"])
        wait = self._over_limit(recipients, now)
        if wait is not None:
            return self._errors(429, ("too many requests", None), headers=self._rate_headers(wait))
        call = self._next_call()
        content = {c["type"]: c["value"] for c in body["content"]}
        out = []
        for p in body["personalizations"]:
            subs = p.get("substitutions", {})
            text, html = content.get("text/plain", ""), content.get("text/html", "")
            for tag, value in subs.items():
                text, html = text.replace(tag, value), html.replace(tag, value)
            for to in p["to"]:
                out.append(Delivered(to["email"], to.get("name", ""), p.get("subject", body.get("subject", "")),
                                     text, html, p.get("headers", {}).get("Message-ID"), call, now))
        self._accept(out)
        return web.Response(status=202, headers={"X-Message-Id": uuid.uuid4().hex[:22], **self._rate_headers()})

    def _problems(self, body: Any) -> Any:
        if not isinstance(body, dict):
            yield "Bad Request", None
            return
        if not isinstance(body.get("from"), dict) or not _ADDRESS.match(str(body["from"].get("email", ""))):
            yield "The from object must be provided for every email send.", "from"
        personalizations = body.get("personalizations")
        if not isinstance(personalizations, list) or not 1 <= len(personalizations) <= 1000:
            yield "The personalizations field is required and must have at least 1 and at most 1000 items.", \
                "personalizations"
            return
        if sum(len(p.get("to", [])) + len(p.get("cc", [])) + len(p.get("bcc", [])) for p in personalizations) > 1000:
            yield "The total number of recipients must be no more than 1000.", "personalizations"
        for n, p in enumerate(personalizations):
            yield from self._personalization_problems(n, p, body)
        content = body.get("content")
        if not isinstance(content, list) or not content:
            yield "Unless a valid template_id is provided, the content parameter is required.", "content"
        else:
            if content[0].get("type") != "text/plain" and any(c.get("type") == "text/plain" for c in content):
                yield "If present, text/plain content must be first.", "content"
            if any(not c.get("value") for c in content):
                yield "The content value must be a string at least one character in length.", "content"

    def _personalization_problems(self, n: int, p: Any, body: dict[str, Any]) -> Any:
        if not p.get("to"):
            yield "The to array is required for all personalization objects.", f"personalizations.{n}.to"
        for m, to in enumerate(p.get("to", [])):
            address = str(to.get("email", ""))
            if not _ADDRESS.match(address) or address.lower() in self.state.rejected:
                yield "Does not contain a valid address.", f"personalizations.{n}.to.{m}.email"
        if not p.get("subject") and not body.get("subject"):
            yield "The subject is required.", f"personalizations.{n}.subject"
        subs = p.get("substitutions", {})
        if sum(len(k.encode()) + len(str(v).encode()) for k, v in subs.items()) > 10_000:
            yield "Substitutions may not exceed 10000 bytes per personalization.", \
                f"personalizations.{n}.substitutions"


class _Form:
    """A form body split by hand (RFC 7578), not with the HTTP library the adapter uses."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.fields: list[tuple[str, str]] = []
        if content_type.startswith("application/x-www-form-urlencoded"):
            self.fields = parse_qsl(body.decode(), keep_blank_values=True)
            return
        boundary = re.search(r'boundary="?([^";]+)"?', content_type)
        if boundary is None:
            raise ValueError("multipart/form-data without a boundary")
        for chunk in body.split(b"--" + boundary.group(1).encode())[1:]:
            if chunk.startswith(b"--"):
                break  # the closing delimiter
            head, _, value = chunk.partition(b"\r\n\r\n")
            name = re.search(rb'Content-Disposition:\s*form-data;[^\r\n]*\bname="([^"]*)"', head, re.IGNORECASE)
            if name is None:
                raise ValueError("a form part without a name")
            self.fields.append((name.group(1).decode(), value.removesuffix(b"\r\n").decode("utf-8")))

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self.fields if k == name]

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.getall(name)
        return values[0] if values else default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None


class MailgunServer(_Server):
    name = "mailgun"

    def __init__(self, api_key: str = "key-test", domain: str = "mg.example.org") -> None:
        super().__init__()
        self.api_key, self.domain = api_key, domain

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v3/{domain}/messages", self._send)

    async def _send(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        content_type = request.headers.get("Content-Type", "")
        response, recipients = await self._check(request, content_type, now)
        self._record(response.status, recipients, now, content_type, len(await request.read()))
        return response

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user == "api" and password == self.api_key

    async def _check(self, request: web.Request, content_type: str, now: float) -> tuple[web.Response, int]:
        if not self._authorized(request):
            return web.Response(status=401, text="Forbidden"), 0
        if request.match_info["domain"] != self.domain:
            return web.json_response({"message": f"Domain not found: {request.match_info['domain']}"},
                                     status=404), 0
        fault = self._fault()
        if fault is not None:
            body = fault.body if fault.body is not None else {"message": f"injected {fault.status}"}
            return web.json_response(body, status=fault.status, headers=fault.headers), 0
        if request.content_length and request.content_length > MAILGUN_MAX_BYTES:
            return web.json_response({"message": "Request Entity Too Large"}, status=413), 0
        if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            return web.json_response({"message": "unsupported content type"}, status=400), 0
        form = _Form(await request.read(), content_type)
        to = [parseaddr(str(v)) for v in form.getall("to")]
        bad = self._problem(form, to)
        if bad:
            return web.json_response({"message": bad}, status=400), len(to)
        wait = self._over_limit(len(to), now)
        if wait is not None:
            return web.json_response({"message": "Too Many Requests"}, status=429,
                                     headers={"Retry-After": f"{max(wait, 0.05):.3f}"}), len(to)
        variables = json.loads(str(form.get("recipient-variables", "{}")))
        call = self._next_call()
        out = []
        for name, address in to:
            mine = variables.get(address, {})

            def fill(template: str, mine: dict = mine) -> str:
                return re.sub(r"%recipient\.([A-Za-z0-9_-]+)%", lambda m: str(mine.get(m.group(1), "")), template)

            out.append(Delivered(address, name, fill(str(form["subject"])), fill(str(form.get("text", ""))),
                                 fill(str(form.get("html", ""))), mine.get("message_id"), call, now))
        self._accept(out)
        return web.json_response({"id": f"<{uuid.uuid4().hex}@{self.domain}>", "message": "Queued. Thank you."},
                                 headers=self._rate_headers()), len(to)

    def _problem(self, form: Any, to: list[tuple[str, str]]) -> str | None:
        if not form.get("from"):
            return "from parameter is missing"
        if not to:
            return "to parameter is missing"
        if len(to) > 1000:
            return "Too many recipients: at most 1000 per message"
        if not form.get("subject"):
            return "subject parameter is missing"
        if not form.get("text") and not form.get("html") and not form.get("template"):
            return "Need at least one of 'text', 'html' or 'template' parameters specified"
        for _, address in to:
            if not _ADDRESS.match(address) or address.lower() in self.state.rejected:
                return "to parameter is not a valid address. please check documentation"
        if "recipient-variables" in form:
            try:
                variables = json.loads(str(form["recipient-variables"]))
            except ValueError:
                return "recipient-variables parameter is not a valid JSON"
            if not isinstance(variables, dict):
                return "recipient-variables parameter is not a valid JSON"
        return None
