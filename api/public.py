"""What the unauthenticated routes share: who the client is (behind a trusted proxy too) and a rate limit.

The client address is the TCP peer, unless the peer is one of ``trusted_proxies``: then it is the rightmost
``X-Forwarded-For`` hop that is not a trusted proxy (the hops to its left are whatever the client wrote, so they
are never believed). Without ``trusted_proxies`` the header is ignored, so nobody can pick their own address.

Limits and the sign-in throttle count an IPv6 client by its /64 (``limit_key``): one host is routinely given a
whole /64, so counting single addresses would let it take 2**64 fresh budgets. IPv4 (and IPv4-mapped IPv6)
addresses count one by one.

The rate limit is a token bucket per client address over the public routes (``/verify/``, ``/certificates/``,
the unsubscribe links ``/u/`` and the sign-in form). It and the admin sign-in throttle are kept in Postgres
(security.limits), so every API replica spends the same budget: N replicas allow what one does. While that
store cannot be used, each replica limits with its own memory (bounded: the least recently seen addresses are
forgotten first), tries the store again after a back-off, and health and /metrics say ``rate-limit-store`` is
down: the limits are then per replica (looser), never off.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from aiohttp import web

from api.errors import Handler, error_response
from api.state import STATE
from resilience.backoff import backoff
from resilience.dependencies import DEPENDENCIES
from resilience.reasons import one_line
from security.limits import LimitStoreUnavailable, SharedLimits

log = logging.getLogger(__name__)
T = TypeVar("T")
LIMIT_STORE = "rate-limit-store"  # its name in health and /metrics

# /metrics is not here: it reads at most once a second whatever the rate (api/metrics.py), and in production
# it answers only with its bearer token.
PUBLIC_PREFIXES = ("/verify/", "/certificates/", "/ui/login", "/u/")
PUBLIC_PATHS: tuple[str, ...] = ()
MAX_CLIENTS = 10_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_address(request: web.Request, trusted: tuple[Network, ...]) -> str:
    """The address of the client that sent this request, as far as it can be known."""
    peer = request.remote or "?"
    ip = _address(peer)
    if not trusted or ip is None or not any(ip in net for net in trusted):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", ())).split(",") if h.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:  # our proxy wrote what it received; a malformed hop is the client's own text
            return hop[:64]
        if not any(address in net for net in trusted):
            return str(address)
    return peer


IPV6_PREFIX = 64


def limit_key(client: str) -> str:
    """What limits and throttles count a client by: its IPv4 address, or its IPv6 address's /64 network."""
    address = _address(client)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return client


class RateLimiter:
    """Token buckets per key: ``per_minute`` requests a minute, bursts up to that many; bounded in memory."""

    def __init__(self, per_minute: int, *, max_keys: int = MAX_CLIENTS) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one token: 0.0 when allowed, else the seconds until a token is back."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)  # most recently seen last
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


class Throttle(Protocol):
    """This process's own sign-in throttle (api.ui.sessions.LoginThrottle)."""

    window: float
    max_failures: int

    def begin(self, client: str) -> bool: ...

    def succeeded(self, client: str) -> None: ...


class ReplicaLimits:
    """The public rate limit and the sign-in throttle as every replica shares them (``store``), with this
    process's own memory standing in while the store cannot be used."""

    def __init__(self, store: SharedLimits | None, per_minute: int) -> None:
        self.store = store
        self.per_minute = per_minute
        self.local = RateLimiter(per_minute) if per_minute else None
        self._failures = 0
        self._retry_at = 0.0

    async def _shared(self, call: Callable[[SharedLimits], Awaitable[T]]) -> T | None:
        """The store's answer, or None: no store, it just failed (back-off), or it fails now."""
        if self.store is None or time.monotonic() < self._retry_at:
            return None
        try:
            answer = await call(self.store)
        except LimitStoreUnavailable as exc:
            self._failures += 1
            delay = backoff(self._failures, base=1.0, cap=30.0, jitter="equal")
            self._retry_at = time.monotonic() + delay
            reason = one_line(exc)
            DEPENDENCIES.lost(LIMIT_STORE, f"{reason}; rate limits and the sign-in throttle are per replica")
            log.warning("shared rate limits unavailable (%s); this replica limits on its own, next try in %.0f s",
                        reason, delay)
            return None
        if self._failures:
            self._failures = 0
            DEPENDENCIES.restored(LIMIT_STORE)
        return answer

    async def take(self, key: str) -> float:
        """Spend one of the client's tokens on a public route: 0.0 when allowed, else seconds to wait."""
        assert self.local is not None, "take() without a rate limit"
        wait = await self._shared(lambda store: store.take("public", key, per_minute=self.per_minute))
        return self.local.take(key) if wait is None else wait

    async def begin_sign_in(self, key: str, local: Throttle) -> bool:
        admitted = await self._shared(
            lambda store: store.begin(key, window=local.window, max_failures=local.max_failures))
        return local.begin(key) if admitted is None else admitted

    async def sign_in_succeeded(self, key: str, local: Throttle) -> None:
        local.succeeded(key)
        await self._shared(lambda store: store.forgive(key))

    async def check(self) -> None:
        """For health: LimitStoreUnavailable when the store cannot be used now."""
        if self.store is not None:
            await self.store.check()
            if self._failures:  # it is back: the next request need not wait for the back-off to end
                self._failures, self._retry_at = 0, 0.0


LIMITS = web.AppKey("replica_limits", ReplicaLimits)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def setup(app: web.Application) -> None:
    state = app[STATE]
    settings = state.settings
    store = SharedLimits(state.store.pool, settings.api_seen_schema, timeout=settings.api_db_timeout)
    app[LIMITS] = ReplicaLimits(store, settings.public_rate_limit_per_minute)


@web.middleware
async def rate_limited(request: web.Request, handler: Handler) -> web.StreamResponse:
    limits = request.app[LIMITS]
    if not limits.per_minute or not is_public(request.path):
        return await handler(request)
    client = client_address(request, request.app[STATE].settings.trusted_proxy_networks())
    wait = await limits.take(limit_key(client))
    if wait:
        response = error_response(429, "rate_limited", "too many requests from this address; try again later")
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response
    return await handler(request)
