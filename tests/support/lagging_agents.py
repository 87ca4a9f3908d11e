"""A Faust worker with two agents on one topic, one of them lagging, for tests/integration/test_rebalance_wait.py:
``python -m tests.support.lagging_agents BOOTSTRAP APP_ID TOPIC DATADIR hold|go mended|bare``.

``fast`` logs each record it takes. ``slow`` logs each record it has done; with ``hold`` it keeps its first record
until a rebalance has stopped the worker's flow (the step in which Faust drops what is buffered), so the records
``fast`` has taken and acked since are, at that moment, in ``slow``'s buffer and nowhere else. ``mended`` gives the
app the worker's own transport (streams.transport, with streams.held_events); ``bare`` leaves Faust's.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import faust

from streams.transport import use_fuller_fetches

log = logging.getLogger("lagging_agents")


def build(bootstrap: str, app_id: str, topic_name: str, datadir: str, *, hold: bool, mended: bool) -> faust.App:
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", store="memory://", datadir=datadir, web_enabled=False,
                    autodiscover=False, consumer_auto_offset_reset="earliest", stream_wait_empty=True,
                    broker_session_timeout=30, broker_rebalance_timeout=120, broker_heartbeat_interval=1)
    if mended:
        use_fuller_fetches(app)
    topic = app.topic(topic_name, value_type=bytes, value_serializer="raw")
    held = [hold]

    @app.agent(topic, name="fast")
    async def fast(stream: faust.StreamT) -> None:
        async for event in stream.events():
            log.warning("fast took %d", event.message.offset)

    @app.agent(topic, name="slow")
    async def slow(stream: faust.StreamT) -> None:
        async for event in stream.events():
            if held[0]:
                log.warning("slow holds %d", event.message.offset)
                while app.flow_control.is_active():
                    await asyncio.sleep(0.05)
                held[0] = False
            log.warning("slow done %d", event.message.offset)

    @app.on_partitions_revoked.connect
    async def revoked(app: faust.App, revoked: set[faust.types.TP], **kwargs: object) -> None:
        if revoked:
            log.warning("revoke finished: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    return app


if __name__ == "__main__":
    bootstrap, app_id, topic_name, datadir, hold, transport = sys.argv[1:7]
    built = build(bootstrap, app_id, topic_name, datadir, hold=hold == "hold", mended=transport == "mended")
    faust.Worker(built, loglevel="info").execute_from_commandline()
