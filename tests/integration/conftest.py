"""Fixtures for the integration tests: the API served inside the test's own event loop; real Postfix and Exim
relays."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from api.app import create_app
from config.settings import Settings
from devtools.devmail import DevMailSink
from tests.support.exim import EximRelay, exim_relay
from tests.support.postfix import ACCESS, PostfixRelay, Submission, postfix_relay

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """Start the API app for a Settings on a free loopback port; every one started is closed after the test."""
    servers: list[TestServer] = []

    async def start(settings: Settings) -> TestServer:
        server = TestServer(create_app(settings), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


def _kept_logs(request: pytest.FixtureRequest, kind: str) -> Iterator[Path]:
    """Where the test's relays of ``kind`` leave their logs, one after the other, beside its process logs."""
    log_dir = REPO / ".dev" / "test-logs" / request.node.name
    return (log_dir / f"{kind}-{number}.log" for number in itertools.count())


@pytest.fixture
def relay_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., PostfixRelay]]:
    """Postfix instances relaying to a sink (tests/support/postfix.py); their logs are kept beside the test's
    process logs."""
    logs = _kept_logs(request, "postfix")
    with ExitStack() as relays:

        def start(sink: DevMailSink, submission: Submission | None = None, access: dict[str, str] = ACCESS,
                  services: str = "", **settings: str) -> PostfixRelay:
            return relays.enter_context(postfix_relay(sink.port, access=access, submission=submission,
                                                      settings=settings, services=services, keep_log=next(logs)))

        yield start


@pytest.fixture
def exim_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., EximRelay]]:
    """Exim instances relaying to a sink (tests/support/exim.py); their main logs are kept beside the test's
    process logs."""
    logs = _kept_logs(request, "exim")
    with ExitStack() as relays:

        def start(sink: DevMailSink, **options: Any) -> EximRelay:
            return relays.enter_context(exim_relay(sink.port, keep_log=next(logs), **options))

        yield start
