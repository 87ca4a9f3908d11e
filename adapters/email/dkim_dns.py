"""At start: is each DKIM key published in DNS (``<selector>._domainkey.<domain>`` TXT) and is it this key?

A missing or different record is a warning, not a refusal (DNS may lag a rotation): it is logged and reported
as a dependency that is down (``dkim:<selector>._domainkey.<domain>``), so ``/api/v1/health`` says degraded with
the reason and ``/metrics`` shows ``offload_dependency_up`` 0 for it. ``OFFLOAD_DKIM_DNS_CHECK=false`` skips it
on machines without DNS.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from adapters.email.dkim import DkimKeyError, load_private_key, public_key_b64
from config.deliverability import DkimKey
from resilience.dependencies import DEPENDENCIES

log = logging.getLogger(__name__)

# name -> the TXT strings found (each record's chunks joined), [] when there is none.
TxtLookup = Callable[[str], Awaitable[list[str]]]


def dns_txt_lookup(timeout: float) -> TxtLookup:
    """TXT records through the system's resolver (dnspython), without blocking the event loop."""
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    async def lookup(name: str) -> list[str]:
        try:
            answer = await dns.asyncresolver.resolve(name, "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise LookupError(f"DNS lookup failed: {type(exc).__name__}") from None
        return [b"".join(record.strings).decode("ascii", "replace") for record in answer]

    return lookup


def tags_of(record: str) -> dict[str, str]:
    """A DKIM key record's tags (RFC 6376 §3.6.1), whitespace removed from values."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip()] = "".join(value.split())
    return tags


def record_problem(key: DkimKey, public_b64: str, records: list[str]) -> str | None:
    """Why the published records do not match this key, or None when one does."""
    name = key.dns_name()
    dkim = [tags_of(r) for r in records if "p=" in r]
    if not dkim:
        return f"no DKIM record at {name} TXT: receivers cannot verify the signature (publish v=DKIM1; k=rsa; p=…)"
    for tags in dkim:
        if tags.get("p") == public_b64 and tags.get("k", "rsa") == "rsa":
            return None
    if any(tags.get("p") == "" for tags in dkim):
        return f"the DKIM record at {name} is revoked (empty p=)"
    return f"the DKIM record at {name} publishes another key than the one configured"


async def check_published(keys: dict[str, DkimKey], lookup: TxtLookup) -> dict[str, str | None]:
    """Check every configured key; returns dependency name -> problem (None: published and matching)."""
    results: dict[str, str | None] = {}
    for key in keys.values():
        dependency = f"dkim:{key.dns_name()}"
        if dependency in results:
            continue
        try:
            public = public_key_b64(load_private_key(key))
            problem = record_problem(key, public, await lookup(key.dns_name()))
        except (DkimKeyError, LookupError) as exc:
            problem = str(exc)
        results[dependency] = problem
        if problem is None:
            DEPENDENCIES.restored(dependency)
            log.info("DKIM key %s is published in DNS", key.dns_name())
        else:
            DEPENDENCIES.lost(dependency, problem)
    return results
