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
from typing import Any
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


# IPv6 space that embeds an IPv4 address the packet ends up at (judged by that address).
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
# RFC 8215 local-use NAT64: the operator picks the prefix length (/32 ... /96), so where the IPv4 address sits is
# unknowable from outside; nothing public is reached through it, so the whole prefix is refused.
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d (RFC 4291): refused outright
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")  # everything outside it is reserved, local or multicast
# Not globally reachable, per the IANA special-purpose registries; listed here as well as asked of Python's
# ipaddress because its tables differ between patch releases (3.11.7 calls 3fff::1 and 64:ff9b:1::1 global).
_NOT_GLOBAL_V6 = tuple(ipaddress.IPv6Network(n) for n in (
    "2001::/23",  # IETF protocol assignments (Teredo, 2001::/32, is judged by its IPv4 addresses before this)
    "2001:db8::/32", "3fff::/20",  # documentation (RFC 3849, RFC 9637)
    "2620:4f:8000::/48",  # AS112 anycast (DNS sinks)
))
_NOT_GLOBAL_V4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
))


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a packet to this IPv6 address ends up at: IPv4-mapped, IPv4-compatible, NAT64
    (well-known prefix), 6to4 and Teredo (server and client). Empty for a plain IPv6 address."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in _IPV4_COMPATIBLE or address in _NAT64_WELL_KNOWN:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def non_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for anything but a globally routable unicast address.

    An IPv6 address that carries an IPv4 address (mapped, NAT64, 6to4, Teredo) is judged by that IPv4 address
    alone: ``[64:ff9b::a9fe:a9fe]`` reaches 169.254.169.254 through a NAT64 gateway, ``[64:ff9b::5db8:d70e]`` a
    public host. IPv4-compatible (``::a.b.c.d``) and local-use NAT64 addresses are refused outright. Any other
    IPv6 address must be global unicast (2000::/3, so site-local fec0::/10, unique-local, link-local, multicast
    and every reserved range are refused) and outside the special-purpose blocks above.
    """
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(int(address))  # the zone (%eth0) says nothing about where it leads
        if address in _IPV4_COMPATIBLE or address in _NAT64_LOCAL_USE:
            return True
        inner = embedded_ipv4(address)
        if inner:
            return any(non_public(v4) for v4 in inner)
        if address not in _GLOBAL_UNICAST or any(address in net for net in _NOT_GLOBAL_V6):
            return True
    elif any(address in net for net in _NOT_GLOBAL_V4):
        return True
    return (not address.is_global or address.is_multicast or address.is_reserved or address.is_unspecified
            or address.is_loopback or address.is_link_local or address.is_private)


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


def _getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
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
