"""Address sanity checks and deterministic Message-IDs, so a resent message is recognisable as the same one."""

from __future__ import annotations

import hashlib
import hmac
import re

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)
# Characters that make an address ambiguous in a header or an SMTP envelope (or let one inject a second one).
_FORBIDDEN = frozenset(' \t\r\n\x00"\',;<>()[]\\')


def message_id_for(job_id: str, userid: int | str, domain: str, *, key: bytes) -> str:
    """``<hex@domain>``: the same recipient of the same job always gets the same Message-ID.

    Providers and mailbox owners can then recognise a message resent after a crash as a duplicate. The hex is
    an HMAC under ``key`` (Settings.message_id_secret), so nobody outside can compute the Message-ID of a
    job's learner and forge a webhook report about it.
    """
    digest = hmac.new(key, f"{job_id}\x00{userid}".encode(), hashlib.sha256).hexdigest()[:40]
    domain = re.sub(r"[^A-Za-z0-9.-]", "", domain) or "localhost"
    return f"<{digest}@{domain}>"


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be used as a recipient, or None when it looks deliverable.

    Practical checks only (what breaks SMTP envelopes and headers), not the full RFC 5321 grammar:
    quoted local parts and IP-literal domains are refused on purpose.
    """
    if not isinstance(address, str) or not address:
        return "address is empty"
    if len(address) > 254:
        return "address is longer than 254 characters"
    bad = next((c for c in address if c in _FORBIDDEN or ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        return f"address contains a forbidden character {bad!r}"
    if address.count("@") != 1:
        return "address must contain exactly one @"
    local, domain = address.split("@")
    return _local_part_problem(local) or _domain_problem(local, domain)


def ascii_address(address: str) -> str:
    """A usable address (``address_problem`` is None) as every provider takes it: the domain IDNA-encoded."""
    local, _, domain = address.rpartition("@")
    return address if domain.isascii() else f"{local}@{domain.encode('idna').decode('ascii')}"


def _local_part_problem(local: str) -> str | None:
    if not local:
        return "local part is empty"
    if len(local.encode("utf-8")) > 64:
        return "local part is longer than 64 characters"
    if not local.isascii():
        return "local part is not ASCII (SMTPUTF8 is not supported)"
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return "local part has a misplaced dot"
    return None


def _domain_problem(local: str, domain: str) -> str | None:
    if "." not in domain:
        return "domain has no dot"
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "domain cannot be IDNA-encoded"
    labels = ascii_domain.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "domain has an invalid label"
    if labels[-1].isdigit():
        return "domain's top-level label is numeric"
    if len(local) + 1 + len(ascii_domain) > 254:
        return "address is longer than 254 characters once IDNA-encoded"
    return None
