"""Fixtures for the integration tests: the API served inside the test's own event loop; real Postfix and Exim
relays; a small file system of its own, to fill up."""

from __future__ import annotations

import itertools
import os
import subprocess
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs of the size asked (e.g. ``"64k"``: room for one certificate and a half) under the test's
    directory, a file system that fills up for real (ENOSPC); ``remount`` with ``-o remount,size=…`` gives it room.
    Unmounted after the test. Mounting needs root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"small-{len(mounts)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "--lazy", str(where)], check=True)
