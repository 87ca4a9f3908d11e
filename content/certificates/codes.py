"""Certificate verification codes: HMAC-SHA256 of (job, user, template) under a server secret.

The code is deterministic, so re-processing a batch after a crash issues the same code and overwrites the same
object, and unguessable (80 bits of a keyed MAC), so nobody can enumerate certificates.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

# Crockford base32: no I, L, O, U, so codes read aloud or typed by hand survive.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
GROUPS = 4
GROUP_LEN = 4
CODE_CHARS = GROUPS * GROUP_LEN  # 16 chars x 5 bits = 80 bits
_DECODE = {c: c for c in ALPHABET} | {"I": "1", "L": "1", "O": "0"}
_SEPARATORS = str.maketrans("", "", "- _\t\r\n")
MIN_SECRET_BYTES = 16


def _group(chars: str) -> str:
    return "-".join(chars[i : i + GROUP_LEN] for i in range(0, len(chars), GROUP_LEN))


def certificate_code(secret: bytes, job_id: str, userid: int | str, template_id: str) -> str:
    """The code of one learner's certificate in one job, e.g. ``"7KQ2-9XHM-C4TB-PW0R"`` (80 bits)."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"certificate code secret must be at least {MIN_SECRET_BYTES} bytes")
    # Unit separators keep ("a", "bc") and ("ab", "c") apart; str(userid) makes 42 and "42" the same user.
    message = "\x1f".join(("cert-code-v1", str(job_id), str(userid), str(template_id))).encode("utf-8")
    number = int.from_bytes(hmac.new(secret, message, hashlib.sha256).digest()[:10], "big")
    chars = "".join(ALPHABET[(number >> shift) & 31] for shift in range(5 * (CODE_CHARS - 1), -1, -5))
    return _group(chars)


def normalise_code(text: str) -> str | None:
    """Canonical ``XXXX-XXXX-XXXX-XXXX`` form of a typed code, or None if it cannot be one.

    Accepts lower case, spaces, missing or extra dashes, and I/L for 1 and O for 0 as Crockford allows.
    """
    if not isinstance(text, str) or len(text) > 64:
        return None
    chars = text.translate(_SEPARATORS).upper()
    if len(chars) != CODE_CHARS:
        return None
    try:
        return _group("".join(_DECODE[c] for c in chars))
    except KeyError:
        return None


def verification_url(base_url: str, code: str) -> str:
    """The public page that confirms a certificate, e.g. ``https://moodle.example.org/verify/7KQ2-…``.

    ``base_url`` is the verification endpoint itself; the code is appended as the last path segment.
    """
    canonical = normalise_code(code)
    if canonical is None:
        raise ValueError(f"not a certificate code: {code!r}")
    return f"{base_url.rstrip('/')}/{quote(canonical)}"
