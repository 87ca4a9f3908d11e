"""Callback URLs must not reach inside: a URL whose host is or resolves to a loopback, private, link-local or
otherwise non-public address is refused (no SSRF through the callback), unless configuration allows it.

Checked at ingest so Moodle hears at once; the callback sender must check the address it connects to again,
because DNS can change between now and then (rebinding).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.intake import Refusal

_FIELD = "callback_url"
# Callback hosts are resolved in threads of their own, never in the event loop's default executor: anything else
# that fills that executor (aiohttp's file responses of /certificates, a library's blocking call) would otherwise
# make a good callback URL time out as callback_url_unresolvable. Threads start on first use.
RESOLVER_THREADS = 4
_RESOLVER = ThreadPoolExecutor(max_workers=RESOLVER_THREADS, thread_name_prefix="callback-dns")


_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))  # RFC 6052, RFC 8215
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a packet to this IPv6 address ends up at: IPv4-mapped, IPv4-compatible, NAT64
    (well-known and local-use prefixes), 6to4 and Teredo (server and client). Empty for a plain IPv6 address."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in _IPV4_COMPATIBLE or any(address in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def non_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for anything but a globally routable unicast address.

    An IPv6 address that carries an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) is judged by that
    IPv4 address too: ``[64:ff9b::a9fe:a9fe]`` reaches 169.254.169.254 through a NAT64 gateway. Reserved,
    site-local (fec0::/10, deprecated but still routed by some stacks) and unspecified ranges are refused.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in _IPV4_COMPATIBLE:  # deprecated since 2006 (RFC 4291): no public service is reached this way
            return True
        inner = embedded_ipv4(address)
        if inner:
            return any(non_public(v4) for v4 in inner)
        if address.is_site_local:
            return True
    return (not address.is_global or address.is_multicast or address.is_reserved or address.is_unspecified
            or address.is_loopback or address.is_link_local)


async def check_callback_url(url: str, *, allow_private: bool, resolve_timeout: float = 3.0) -> Refusal | None:
    """None when the URL may be called back; otherwise why not."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return Refusal("invalid_callback_url", _FIELD, "not a valid URL")
    if parts.scheme not in ("https", "http"):
        return Refusal("invalid_callback_url", _FIELD, "the callback URL must be http or https")
    if not parts.hostname or parts.username or parts.password:
        return Refusal("invalid_callback_url", _FIELD, "the callback URL needs a host and no credentials")
    if allow_private:
        return None
    host = parts.hostname
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.run_in_executor(_RESOLVER, _getaddrinfo, host, port or (443 if parts.scheme == "https" else 80)),
                timeout=resolve_timeout,
            )
        except (OSError, TimeoutError):
            return Refusal("callback_url_unresolvable", _FIELD, f"the callback host {host!r} does not resolve")
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    if not addresses or any(non_public(a) for a in addresses):
        return Refusal("callback_url_forbidden", _FIELD,
                       f"the callback host {host!r} is or resolves to a loopback, private or link-local address")
    return None


def _getaddrinfo(host: str, port: int) -> list[tuple]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


# --- the query string of a callback URL stays out of the log -------------------------------------------------
# Moodle's callback URLs may carry a token in their query (e.g. wstoken). The API keeps only scheme, host and path
# in the events (JobRequested, JobAccepted) and read models, and the query sealed with AES-GCM under
# Settings.callback_url_secret, bound to the job id; the worker opens it just before it calls Moodle.


def _aead(secret: bytes) -> AESGCM:
    return AESGCM(hashlib.sha256(b"offload callback query\x00" + secret).digest())


def seal_query(url: str, job_id: str, secret: bytes) -> tuple[str, str | None]:
    """(the URL without its query, the sealed query or None when there was none)."""
    parts = urlsplit(url)
    if not parts.query:
        return url, None
    nonce = os.urandom(12)
    sealed = nonce + _aead(secret).encrypt(nonce, parts.query.encode(), job_id.encode())
    return urlunsplit(parts._replace(query="", fragment="")), base64.urlsafe_b64encode(sealed).decode()


class SealedQueryError(ValueError):
    """The sealed query cannot be opened: another secret, another job, or damaged."""


def open_query(url: str, sealed: str | None, job_id: str, secret: bytes) -> str:
    """The full URL the worker calls."""
    if sealed is None:
        return url
    try:
        raw = base64.urlsafe_b64decode(sealed.encode())
        query = _aead(secret).decrypt(raw[:12], raw[12:], job_id.encode()).decode()
    except (binascii.Error, ValueError, InvalidTag) as exc:
        raise SealedQueryError("the callback URL's sealed query cannot be opened (callback_url_secret changed?)") \
            from exc
    return urlunsplit(urlsplit(url)._replace(query=query))


def redacted(url: str | None, sealed: str | None = None) -> str | None:
    """What the API and UI show: the query's values replaced, so a token never reaches a screen or a log."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.query:
        # A pair without "=" is all value (``?0123TOKEN``): nothing of it is kept.
        shown = [f"{pair.split('=', 1)[0]}=[redacted]" if "=" in pair else "[redacted]"
                 for pair in parts.query.split("&") if pair]
        return urlunsplit(parts._replace(query="&".join(shown), fragment=""))
    return f"{url}?[redacted]" if sealed else url


def scrub(text: str, query: str) -> str:
    """``text`` (an error about a call to a URL with this query) with the query and each of its values, as sent
    and percent-decoded, replaced by ``[redacted]``: an error that quotes the URL, or only a part of it, must not
    carry the token into an event or a log line."""
    if not query:
        return text
    secrets_ = {query}
    for pair in query.split("&"):
        secrets_.add(pair.split("=", 1)[-1])
    secrets_.update(value for _, value in parse_qsl(query, keep_blank_values=True))
    for secret in sorted((v for v in secrets_ if len(v) >= 4), key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text
