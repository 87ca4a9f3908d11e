"""The worker's consumer asks the broker for fewer, fuller fetches (streams.transport)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka.consumer.consumer as aiokafka_consumer
import pytest

from config.settings import Settings
from streams.app import create_app
from streams.transport import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES, FullerFetchTransport


class _FetcherBuilt(Exception):
    pass


def test_the_fetcher_of_the_workers_consumer_gets_the_fuller_fetch_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    built: dict[str, Any] = {}

    def fetcher(*args: Any, **kwargs: Any) -> None:
        built.update(kwargs)
        raise _FetcherBuilt  # stop start() here: what aiokafka hands its fetcher is what this test is about

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(aiokafka_consumer, "Fetcher", fetcher)

    async def start_consumer() -> None:
        app = create_app(Settings(environment="test", certificate_code_secret_allow_default=True))
        assert isinstance(app.transport, FullerFetchTransport)
        # Built the way Faust's consumer thread builds it when the worker starts (no broker is asked here).
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        monkeypatch.setattr(consumer._client, "bootstrap", nothing)
        monkeypatch.setattr(consumer, "_wait_topics", nothing)
        try:
            with pytest.raises(_FetcherBuilt):
                await consumer.start()
        finally:
            await consumer._client.close()

    asyncio.run(start_consumer())
    assert built["fetch_min_bytes"] == FETCH_MIN_BYTES
    assert built["fetch_max_wait_ms"] == FETCH_MAX_WAIT_MS
