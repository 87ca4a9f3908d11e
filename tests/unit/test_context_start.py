"""The worker's context starts its producer and log reader when an agent or a timer first needs them: while no
broker answers it waits with back-off, it does not raise (a timer's error stops a Faust worker)."""

from __future__ import annotations

import asyncio
import logging

import faust
import pytest
from aiokafka.errors import KafkaConnectionError

from config.settings import Settings
from streams.context import StreamContext
from streams.ledger import OutcomeLedger
from tests.support.email import closed_port


async def test_starting_with_no_broker_waits_for_one_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(environment="test", kafka_bootstrap_servers=f"127.0.0.1:{closed_port()}",
                        reconnect_max_delay=0.2)
    app = faust.App("context-start-test", broker=f"kafka://{settings.kafka_bootstrap_servers}", autodiscover=False)
    ctx = StreamContext.build(app, settings)
    caplog.set_level(logging.WARNING, logger="streams.context")
    starting = asyncio.create_task(ctx.ensure_started())
    try:
        done, _ = await asyncio.wait({starting}, timeout=3)
        assert not done, f"ensure_started gave up: {starting.exception()!r}"  # still waiting for a broker
        tries = [r for r in caplog.records if "no broker to start its producer on" in r.getMessage()]
        assert len(tries) >= 2  # tried again, with back-off, and said so each time
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
    assert not ctx._started


async def test_a_log_reader_whose_start_failed_tries_again_at_the_next_start() -> None:
    # It kept the consumer that failed to start, so the next start returned at once "started" and the first
    # fetch met a consumer that had never connected.
    ledger = OutcomeLedger(Settings(environment="test", kafka_bootstrap_servers=f"127.0.0.1:{closed_port()}"))
    for _ in range(2):
        with pytest.raises(KafkaConnectionError):
            await ledger.start()
    await ledger.stop()
