"""What every handler of one API application shares, under one typed application key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from api.errors import ApiError
from api.store import ReadStore
from api.submissions import Submissions
from config.settings import Settings
from eventlog.publisher import EventPublisher
from security.signing import Caller, RequestVerifier


@dataclass
class ApiState:
    settings: Settings
    verifier: RequestVerifier
    publisher: EventPublisher
    store: ReadStore
    submissions: Submissions


STATE = web.AppKey("state", ApiState)
CALLER = web.RequestKey("caller", Caller)  # set by the signing middleware
BODY = web.RequestKey("body", bytes)  # the body the signature covered, read once


def state_of(request: web.Request) -> ApiState:
    return request.app[STATE]


def body_of(request: web.Request) -> bytes:
    return request.get(BODY, b"")


def caller_of(request: web.Request) -> Caller:
    caller = request.get(CALLER)
    if not isinstance(caller, Caller):  # only the unsigned routes lack one, and they never ask
        raise ApiError(401, "missing_signature", "this request must be signed")
    return caller
