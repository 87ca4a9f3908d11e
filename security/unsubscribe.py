"""One-click unsubscribe tokens (RFC 8058): stateless HMACs of company, learner and list.

A token reads ``u1.<company>.<userid>.<list>.<mac>``: the MAC is HMAC-SHA256 under ``OFFLOAD_UNSUBSCRIBE_SECRET``
over the three values, base64url without padding (43 characters, 256 bits), so nobody without the secret can
make a token for another learner, list or company, and no token is stored anywhere. ``read_token`` compares
MACs in constant time and answers None for anything that is not a token we made. The values travel in clear:
they name a Moodle user id, never an address.

Workers make the tokens that go into List-Unsubscribe headers; the API reads them at ``/u/<token>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import quote

VERSION = "u1"
LIST_PATTERN = r"[a-z0-9_-]{1,64}"  # list ids are template-id shaped: safe in a URL path and a header
_TOKEN = re.compile(rf"{VERSION}\.([0-9]{{1,10}})\.([0-9]{{1,19}})\.({LIST_PATTERN})\.([A-Za-z0-9_-]{{43}})")
MAX_TOKEN_LENGTH = 160


@dataclass(frozen=True, slots=True)
class UnsubscribeToken:
    """Whom a token unsubscribes from what."""

    company_id: int
    userid: int
    list_id: str


def _mac(secret: bytes, company_id: int, userid: int, list_id: str) -> str:
    message = f"{VERSION}\0{company_id}\0{userid}\0{list_id}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def make_token(secret: bytes, company_id: int, userid: int, list_id: str) -> str:
    if not re.fullmatch(LIST_PATTERN, list_id):
        raise ValueError(f"list id {list_id!r} is not a valid list id")
    return f"{VERSION}.{company_id}.{userid}.{list_id}.{_mac(secret, company_id, userid, list_id)}"


def read_token(secret: bytes, token: str) -> UnsubscribeToken | None:
    """The token's company, learner and list when its MAC is ours; None for anything else."""
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    company_id, userid, list_id = int(match.group(1)), int(match.group(2)), match.group(3)
    if not hmac.compare_digest(match.group(4), _mac(secret, company_id, userid, list_id)):
        return None
    return UnsubscribeToken(company_id, userid, list_id)


def list_unsubscribe_headers(secret: bytes, *, base_url: str, mailto: str | None, company_id: int, userid: int,
                             list_id: str) -> dict[str, str]:
    """The two RFC 8058 headers of one learner's bulk message: the https URI first, then the mailto."""
    token = make_token(secret, company_id, userid, list_id)
    targets = [f"<{base_url.rstrip('/')}/u/{token}>"]
    if mailto:
        targets.append(f"<mailto:{mailto}?subject={quote('unsubscribe ' + token)}>")
    return {"List-Unsubscribe": ", ".join(targets), "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
