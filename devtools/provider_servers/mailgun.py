"""Mailgun ``POST /v3/{domain}/messages`` as its documentation defines it (see ``devtools.provider_servers``)."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from email.utils import parseaddr
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from devtools.provider_servers.base import ADDRESS, MAILGUN_MAX_BYTES, Delivered, ProviderServer


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


class MailgunServer(ProviderServer):
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
        self._record(request, response.status, recipients, now, content_type, len(await request.read()))
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
            if not ADDRESS.match(address) or address.lower() in self.state.rejected:
                return "to parameter is not a valid address. please check documentation"
        if "recipient-variables" in form:
            try:
                variables = json.loads(str(form["recipient-variables"]))
            except ValueError:
                return "recipient-variables parameter is not a valid JSON"
            if not isinstance(variables, dict):
                return "recipient-variables parameter is not a valid JSON"
        return None
