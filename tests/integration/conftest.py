"""Fixtures for the integration tests that serve the API inside the test's own event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from api.app import create_app
from config.settings import Settings


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
