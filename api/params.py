"""Reading path and query parameters the same way everywhere, with a 4xx that says what was wrong."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from api.errors import ApiError

_JOB_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# ASCII digits only: str.isdigit() is also true for "²" or "٣", which int() then refuses (a 500).
_DIGITS = re.compile(r"[0-9]{1,12}")
MAX_PAGE = 200


def job_id(request: web.Request) -> str:
    value = request.match_info["job_id"]
    if not _JOB_ID.fullmatch(value):
        raise ApiError(404, "job_not_found", "no such job")
    return value


def company_id(request: web.Request) -> int:
    value = request.match_info["company_id"]
    if not _DIGITS.fullmatch(value) or len(value) > 9:
        raise ApiError(404, "company_not_found", "no such company")
    return int(value)


def integer(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer from {low} to {high}")
    return int(raw)


def choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    raw = request.query.get(name)
    if raw is not None and raw not in allowed:
        raise ApiError(400, "invalid_parameter", f"{name} must be one of {', '.join(allowed)}")
    return raw


def page(request: web.Request) -> tuple[int, int]:
    return integer(request, "limit", 50, low=1, high=MAX_PAGE), integer(request, "offset", 0, low=0, high=10**7)


def json_object(body: bytes, *, required: bool) -> dict[str, Any]:
    """A request body that must be a JSON object (or may be empty when not required)."""
    if not body.strip():
        if required:
            raise ApiError(400, "malformed_json", "the body must be a JSON object")
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    except RecursionError:  # JSON nested ~1,000 deep
        raise ApiError(400, "malformed_json", "the body is nested too deeply") from None
    if not isinstance(value, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    return value
