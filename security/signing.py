"""Request signing: HMAC-SHA256 under a per-company key over method, path, timestamp, nonce and body hash.

The canonical string a client signs (UTF-8, fields joined by a single ``\\n``, no trailing newline)::

    METHOD              upper case, e.g. POST
    PATH                the path with its raw query string as sent, e.g. /api/v1/jobs?limit=10
    TIMESTAMP           X-Offload-Timestamp: unix seconds, decimal
    NONCE               X-Offload-Nonce: 16-64 characters of [A-Za-z0-9_-], new for every request
    BODY_SHA256         lower-case hex SHA-256 of the body bytes (of the empty string for a GET)

``X-Offload-Signature`` is the lower-case hex HMAC-SHA256 of that string under the secret of
``X-Offload-Key-Id``. The nonce lets a client poll the same URL twice in one second without the second
request looking like a replay; a signature already seen within the window is refused.

The timestamp is checked with the same clock when the headers arrive (so a stale request's body is never read),
again once the body has been read, and a last time after the shared store has answered (the store may have made
the request wait for a connection). A signature is remembered until timestamp + window, so a request admitted at
any moment up to that edge is always still remembered: a replay whose body is sent slowly, or whose store
round trip is slow, cannot outlive the memory of the original. The shared memory is ``security.seen``
(Postgres), so every API replica refuses the others' replays (finding 5).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from config.settings import ApiKey
from security.seen import MemorySeen, SeenOnce, SeenUnavailable

KEY_ID_HEADER = "X-Offload-Key-Id"
TIMESTAMP_HEADER = "X-Offload-Timestamp"
NONCE_HEADER = "X-Offload-Nonce"
SIGNATURE_HEADER = "X-Offload-Signature"

_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


class AuthError(Exception):
    """A request that is not (or no longer) trustworthy; ``code`` is the machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical_string(method: str, path: str, timestamp: str, nonce: str, digest: str) -> bytes:
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()


def sign(secret: str | bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    """The signature a client sends for this request (what the PHP client computes too)."""
    key = secret.encode() if isinstance(secret, str) else secret
    message = canonical_string(method, path, timestamp, nonce, body_digest(body))
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who signed the request: the key id and its company (None for an admin key, which sees every company)."""

    key_id: str
    company_id: int | None

    @property
    def is_admin(self) -> bool:
        return self.company_id is None

    def may_see(self, company_id: int | None) -> bool:
        return self.company_id is None or (company_id is not None and company_id == self.company_id)


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    key_id: str
    timestamp: str
    nonce: str
    signature: str
    key: ApiKey


class ReplayCache:
    """Signatures seen within the timestamp window, in memory: one API process refuses every replay it
    could accept. Several API processes behind a balancer would need a shared store (e.g. Postgres)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()  # signature -> when it stops being acceptable

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_remember(self, signature: str, expires_at: float, now: float) -> bool:
        """True the first time a signature is offered; False for a replay."""
        self._prune(now)
        if signature in self._seen:
            return False
        self._seen[signature] = expires_at
        return True

    def forget(self, signature: str) -> None:
        self._seen.pop(signature, None)

    def _prune(self, now: float) -> None:
        # Expiry is timestamp + window, which grows with arrival order only roughly; pruning stops at the
        # first live entry, so a few expired entries may stay a little longer. Harmless: they are refused
        # by the timestamp check anyway.
        # A timestamp exactly at the edge of the window is still accepted, so its signature must still be
        # remembered at that very moment: only entries strictly past their expiry go.
        while self._seen:
            signature, expires_at = next(iter(self._seen.items()))
            if expires_at >= now:
                break
            del self._seen[signature]


class RequestVerifier:
    """Checks the signed headers of a request in the order cheapest first, so junk costs little."""

    def __init__(self, keys: Mapping[str, ApiKey], *, window: float, clock: Callable[[], float] = time.time,
                 seen: SeenOnce | None = None) -> None:
        self._keys = keys
        self._window = window
        self._clock = clock
        self.replays = ReplayCache()  # this process's own memory: refuses a local replay without a round trip
        self.seen: SeenOnce = seen if seen is not None else MemorySeen()  # shared by every replica

    def check_headers(self, headers: Mapping[str, str]) -> SignedHeaders:
        """Everything that can be checked before the body is read: presence, shape, key id, timestamp."""
        values = {}
        for name in (KEY_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER):
            value = headers.get(name)
            if not value:
                raise AuthError("missing_signature", f"the {name} header is required on every request")
            values[name] = value
        key_id = values[KEY_ID_HEADER]
        key = self._keys.get(key_id)
        if key is None:
            raise AuthError("unknown_key", "the key id is not known")
        timestamp = values[TIMESTAMP_HEADER]
        if not _TIMESTAMP.fullmatch(timestamp):
            raise AuthError("bad_timestamp", f"{TIMESTAMP_HEADER} must be unix seconds")
        self._check_window(int(timestamp), self._clock())
        nonce = values[NONCE_HEADER]
        if not _NONCE.fullmatch(nonce):
            raise AuthError("bad_nonce", f"{NONCE_HEADER} must be 16-64 characters of A-Z a-z 0-9 _ -")
        signature = values[SIGNATURE_HEADER].lower()
        if not _SIGNATURE.fullmatch(signature):
            raise AuthError("bad_signature", "the signature does not match the request")
        return SignedHeaders(key_id, timestamp, nonce, signature, key)

    def verify(self, signed: SignedHeaders, method: str, path: str, body: bytes, *,
               now: float | None = None) -> Caller:
        """The body's signature, compared in constant time, the window again, then this process's replay
        check; returns the caller. ``admit`` adds the check shared by every replica."""
        expected = sign(signed.key.secret.get_secret_value(), method, path, signed.timestamp, signed.nonce, body)
        if not hmac.compare_digest(expected.encode(), signed.signature.encode()):
            raise AuthError("bad_signature", "the signature does not match the request")
        now = self._clock() if now is None else now
        self._check_window(int(signed.timestamp), now)  # the body may have taken a while: judged again, same clock
        # Only a verified signature is remembered: unsigned junk cannot fill the cache.
        if not self.replays.check_and_remember(signed.signature, self.remember_until(signed), now):
            raise AuthError("replayed_request", "this signed request was already received")
        return Caller(signed.key_id, signed.key.company_id)

    async def admit(self, signed: SignedHeaders, method: str, path: str, body: bytes) -> Caller:
        """``verify`` plus the replay check in the store all API replicas share. Raises SeenUnavailable when
        that store cannot be asked: the request is refused, never waved through."""
        now = self._clock()
        caller = self.verify(signed, method, path, body, now=now)
        try:
            first = await self.seen.first_time("request", signed.signature, expires_at=self.remember_until(signed),
                                               now=now)
        except SeenUnavailable:
            self.replays.forget(signed.signature)  # refused unchecked, not admitted: the client may send it again
            raise
        if not first:
            raise AuthError("replayed_request", "this signed request was already received")
        # The store answered a moment later than ``now``: admitted only if the window is still open now, so what
        # the store remembered (until timestamp + window) covers every moment this request could be admitted.
        self._check_window(int(signed.timestamp), self._clock())
        return caller

    def remember_until(self, signed: SignedHeaders) -> float:
        return int(signed.timestamp) + self._window

    def _check_window(self, timestamp: int, now: float) -> None:
        skew = now - timestamp
        if abs(skew) > self._window:
            raise AuthError("stale_timestamp",
                            f"the timestamp is {abs(skew):.0f} s {'old' if skew > 0 else 'ahead'}; "
                            f"the window is {self._window:.0f} s")


__all__ = ["AuthError", "Caller", "RequestVerifier", "SeenUnavailable", "SignedHeaders", "sign"]
