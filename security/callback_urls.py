"""Callback URLs must not reach inside: a URL whose host is or resolves to a loopback, private, link-local or
otherwise non-public address is refused (no SSRF through the callback), unless configuration allows it.

Checked at ingest so Moodle hears at once; the callback sender must check the address it connects to again,
because DNS can change between now and then (rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from schemas.intake import Refusal

_FIELD = "callback_url"


def non_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for anything but a globally routable unicast address (IPv4-mapped IPv6 judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


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
                loop.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM),
                timeout=resolve_timeout,
            )
        except (OSError, TimeoutError):
            return Refusal("callback_url_unresolvable", _FIELD, f"the callback host {host!r} does not resolve")
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    if not addresses or any(non_public(a) for a in addresses):
        return Refusal("callback_url_forbidden", _FIELD,
                       f"the callback host {host!r} is or resolves to a loopback, private or link-local address")
    return None
