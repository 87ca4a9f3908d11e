"""The admin UI's session crypto, its sign-in throttle and its small-form reader: no HTTP routes here.

Sessions are stateless: ``base64(json{k, n, e}).hmac`` in an HttpOnly, SameSite=Strict cookie, signed with
HMAC-SHA256 under ``ui_session_secret``. The MAC also covers a hash of the admin key's secret, so rotating or
removing the key ends its sessions. Nothing secret is inside; nothing is stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import MultiDict

from api.errors import ApiError

FORM_READ_SECONDS = 10.0  # a sign-in form is a few hundred bytes: a client that trickles it is cut off
MAX_FORM_FIELDS = 32


@dataclass(frozen=True)
class Session:
    key_id: str
    nonce: str
    expires: int
    csrf: str


class Sessions:
    """Issues and reads signed session cookies and derives each session's CSRF token."""

    def __init__(self, secret: bytes, *, hours: float, secure: bool) -> None:
        self._secret = secret
        self.seconds = int(hours * 3600)
        self.secure = secure

    def _sign(self, payload: str, key_secret: str) -> str:
        # The key's secret enters only as a hash inside the MAC: a changed or removed key ends its sessions.
        fingerprint = hashlib.sha256(key_secret.encode()).hexdigest()
        mac = hmac.new(self._secret, f"session|{payload}|{fingerprint}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def csrf_for(self, nonce: str) -> str:
        return hmac.new(self._secret, f"csrf|{nonce}".encode(), hashlib.sha256).hexdigest()

    def issue(self, key_id: str, key_secret: str, now: float | None = None) -> str:
        body = {"k": key_id, "n": secrets.token_urlsafe(16), "e": int((now or time.time()) + self.seconds)}
        payload = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload, key_secret)}"

    def read(self, value: str | None, admin_secrets: dict[str, str], now: float | None = None) -> Session | None:
        """The session in a cookie value, or None; raises ApiError(400) for a value no browser of ours sent."""
        if not value:
            return None
        if not value.isascii():  # compare_digest refuses non-ASCII text; our cookies are base64url
            raise ApiError(400, "invalid_cookie", "the session cookie is not one this service issued")
        if len(value) > 1024 or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        try:
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            key_id, nonce, expires = str(body["k"]), str(body["n"]), int(body["e"])
        except (ValueError, KeyError, TypeError):
            return None
        key_secret = admin_secrets.get(key_id)
        if key_secret is None or not hmac.compare_digest(mac, self._sign(payload, key_secret)):
            return None
        if expires < (now or time.time()):
            return None
        return Session(key_id, nonce, expires, self.csrf_for(nonce))


def check_csrf(token: object, session: Session) -> None:
    """The form's CSRF token must be this session's: 400 for a malformed one, 403 for a wrong or missing one."""
    if isinstance(token, str) and not token.isascii():
        raise ApiError(400, "invalid_csrf_token", "the CSRF token is malformed; reload the page and try again")
    if not isinstance(token, str) or not hmac.compare_digest(token, session.csrf):
        raise web.HTTPForbidden(text="invalid or missing CSRF token; reload the page and try again")


class LoginThrottle:
    """Failed sign-ins per client address over a sliding window, bounded in memory.

    An attempt counts as failed from the moment it starts, before its body is read, and is forgiven only when
    it succeeds. The check and the count happen together with no ``await`` between them, so parallel attempts
    (however slowly their bodies arrive) cannot all pass the check. Each address keeps at most
    ``max_failures`` timestamps, and at most ``max_clients`` addresses are kept (least recently seen dropped).
    This process's own count: sign-in asks the one every replica shares (api.public.ReplicaLimits, in Postgres)
    and falls back to this one only while that store cannot be used.
    """

    def __init__(self, *, window: float = 300.0, max_failures: int = 10, max_clients: int = 10_000) -> None:
        self.window = window
        self.max_failures = max_failures
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def begin(self, client: str, now: float | None = None) -> bool:
        """Admit one attempt (and count it as failed until it succeeds), or False when the client is throttled."""
        now = time.monotonic() if now is None else now
        recent = self._failures.pop(client, None) or deque(maxlen=self.max_failures)
        while recent and now - recent[0] >= self.window:
            recent.popleft()
        admitted = len(recent) < self.max_failures
        if admitted:
            recent.append(now)
        self._failures[client] = recent
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
        return admitted

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


async def read_form(request: web.Request, limit: int) -> MultiDict[str]:
    """A URL-encoded form of at most ``limit`` bytes, refused before reading when it says it is larger."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"a form here is at most {limit} bytes")
    if request.content_type not in ("application/x-www-form-urlencoded", "application/octet-stream", ""):
        raise ApiError(415, "unsupported_media_type", "send the form as application/x-www-form-urlencoded")
    body = bytearray()
    try:
        async with asyncio.timeout(FORM_READ_SECONDS):
            while chunk := await request.content.read(limit + 1 - len(body)):
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, "body_too_large", f"a form here is at most {limit} bytes")
    except TimeoutError:
        raise ApiError(408, "body_timeout", "the form arrived too slowly") from None
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_form", "the form is not valid URL-encoded UTF-8") from None
    return MultiDict(pairs)
