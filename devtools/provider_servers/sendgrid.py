"""SendGrid v3 ``POST /v3/mail/send`` as its documentation defines it (see ``devtools.provider_servers``)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web

from devtools.provider_servers.base import ADDRESS, SENDGRID_MAX_BYTES, Delivered, ProviderServer


class SendGridServer(ProviderServer):
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
        self._record(request, response.status, self._count(raw), now, content_type, len(raw))
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
        if not isinstance(body.get("from"), dict) or not ADDRESS.match(str(body["from"].get("email", ""))):
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
            if not ADDRESS.match(address) or address.lower() in self.state.rejected:
                yield "Does not contain a valid address.", f"personalizations.{n}.to.{m}.email"
        if not p.get("subject") and not body.get("subject"):
            yield "The subject is required.", f"personalizations.{n}.subject"
        subs = p.get("substitutions", {})
        if sum(len(k.encode()) + len(str(v).encode()) for k, v in subs.items()) > 10_000:
            yield "Substitutions may not exceed 10000 bytes per personalization.", \
                f"personalizations.{n}.substitutions"
