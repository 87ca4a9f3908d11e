"""The callback adapter: signs a callback body the way Moodle verifies it and POSTs it to the job's callback URL.

Signing is the API's own scheme (``security.signing``), seen from the other side: HMAC-SHA256 under the callback
key over ``POST``, the callback URL's raw path and query, a timestamp, a fresh nonce and the body's SHA-256,
sent as ``X-Offload-Key-Id/-Timestamp/-Nonce/-Signature``; ``OffloadClient::verifyCallback`` checks exactly
that. Every attempt is signed anew, so a retry hours later is inside Moodle's timestamp window.

No SSRF through the callback: the URL is checked as at ingest (``security.callback_urls``), and the resolver that
opens the connection refuses a non-public address again, so DNS changed since ingest (rebinding) cannot reach
inside. Redirects are not followed and proxies from the environment are not used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from config.settings import Settings
from security.callback_urls import check_callback_url, non_public
from security.signing import KEY_ID_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

USER_AGENT = "ManiReports-Offload-Callback/1"
CALLBACK_ID_HEADER = "X-Offload-Callback-Id"


def callback_body(*, callback_id: str, job_id: str, company_id: int, event: str, status: str, run: int,
                  total: int, succeeded: int, failed: int, milestone: int | None, at: datetime,
                  suppressed: int = 0, pause: dict[str, Any] | None = None,
                  resume: dict[str, Any] | None = None, problems: list[dict[str, Any]] | None = None) -> bytes:
    """The JSON Moodle receives: what happened to the job, in totals and percent. No secret, no learner data.
    ``suppressed``: learners on the company's suppression list, not sent (docs/suppression.md). ``pause`` (event
    "paused": why, the figures and thresholds), ``resume`` (event "resumed": who asked, why) and ``problems``
    (event "rejected": code, field and message of each) only on those."""
    done = succeeded + failed + suppressed
    percent = 100 if event == "completed" else (min(100, done * 100 // total) if total else 0)
    return json.dumps({
        "callback_id": callback_id,
        "job_id": job_id,
        "company_id": company_id,
        "event": event,
        "status": status,
        "run": run,
        "milestone": milestone,
        "totals": {"total": total, "succeeded": succeeded, "failed": failed, "suppressed": suppressed,
                   "pending": max(0, total - done)},
        "percent": percent,
        "timestamp": at.isoformat(),
        **({"pause": pause} if pause is not None else {}),
        **({"resume": resume} if resume is not None else {}),
        **({"problems": problems} if problems is not None else {}),
    }, separators=(",", ":")).encode()


def unsubscribe_body(*, callback_id: str, company_id: int, userid: int, list_id: str, method: str,
                     at: datetime) -> bytes:
    """What Moodle receives when a learner unsubscribed: enough to update that user's message preferences."""
    return json.dumps({
        "callback_id": callback_id,
        "company_id": company_id,
        "event": "unsubscribed",
        "userid": userid,
        "list_id": list_id,
        "method": method,
        "timestamp": at.isoformat(),
    }, separators=(",", ":")).encode()


def signed_headers(url: str, body: bytes, key_id: str, secret: str, *, now: float | None = None,
                   nonce: str | None = None) -> dict[str, str]:
    """The headers of one callback attempt; the signed path is the raw path and query aiohttp sends."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_urlsafe(18)
    path = URL(url, encoded=True).raw_path_qs
    return {
        KEY_ID_HEADER: key_id,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: sign(secret, "POST", path, timestamp, nonce, body),
        "Content-Type": "application/json",
    }


class ForbiddenAddress(aiohttp.ClientConnectionError):
    """The callback host resolved to a loopback, private, link-local or otherwise non-public address."""


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses a host with any non-public address: the check is made on the
    addresses the connection is opened to, not on an earlier lookup."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if non_public(ipaddress.ip_address(result["host"].split("%")[0])):
                raise ForbiddenAddress(f"callback host {host!r} resolves to non-public address {result['host']}")
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one POST achieved. ``permanent`` failures are not worth retrying (a forbidden or invalid URL)."""

    delivered: bool
    status: int | None
    error: str | None
    duration_ms: int
    permanent: bool = False


class CallbackSender:
    """POSTs signed callbacks with one pooled aiohttp session; one job: ``send``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        allow_private = self._settings.api_allow_private_callbacks
        connector = aiohttp.TCPConnector(
            resolver=None if allow_private else PublicOnlyResolver(),
            use_dns_cache=False,  # every new connection resolves, and is checked, again
            limit=self._settings.callback_concurrency,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._settings.callback_timeout,
                                          connect=self._settings.callback_connect_timeout),
            headers={"User-Agent": USER_AGENT},
            trust_env=False,  # no proxy from the environment between us and the checked address
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, url: str, body: bytes, *, key_id: str, secret: str, callback_id: str) -> Attempt:
        if self._session is None:
            await self.start()
        assert self._session is not None
        started = time.monotonic()

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        refusal = await check_callback_url(url, allow_private=self._settings.api_allow_private_callbacks)
        if refusal is not None:  # a host that does not resolve now may resolve later; a forbidden one never
            return Attempt(False, None, f"{refusal.code}: {refusal.message}", took(),
                           permanent=refusal.code != "callback_url_unresolvable")
        headers = {**signed_headers(url, body, key_id, secret), CALLBACK_ID_HEADER: callback_id}
        try:
            async with self._session.post(URL(url, encoded=True), data=body, headers=headers,
                                          allow_redirects=False) as response:
                await response.read()  # drain, so the connection can be reused; Moodle's answer is not needed
                if 200 <= response.status < 300:
                    return Attempt(True, response.status, None, took())
                return Attempt(False, response.status, f"HTTP {response.status} {response.reason or ''}".strip(),
                               took())
        except ForbiddenAddress as exc:
            return Attempt(False, None, f"callback_url_forbidden: {exc}", took(), permanent=True)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Attempt(False, None, _describe(exc), took())


def moodle_dependency(url: str) -> str:
    """``moodle <host>[:port]``, a callback URL's name in the worker's health: the host only, never the URL's
    user info, path or query."""
    parsed = URL(url, encoded=True)
    port = f":{parsed.explicit_port}" if parsed.explicit_port is not None else ""
    return f"moodle {parsed.host or '(no host)'}{port}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    text: Any = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
