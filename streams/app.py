"""Builds the one Faust app: topics, tables and agents, wired to the services they need.

``faust -A streams.app worker`` and ``offload worker`` both use :func:`create_app`; nothing here touches the
event loop at import time (the module-level ``app`` is built on first access).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import faust

from config.load import settings_or_exit
from config.settings import Settings
from eventlog.topics import MAX_MESSAGE_BYTES
from streams import health, recovery_watch
from streams.context import StreamContext
from streams.transport import use_fuller_fetches

MAX_POLL_RECORDS = 200  # records one poll of the worker's consumer hands to its agents, at most (below)

app: faust.App  # built on first access, by __getattr__ below


def data_dir(app_id: str) -> Path:
    """Where Faust keeps its directory for ``app_id``. With memory tables it keeps nothing of value on disk, but it
    still makes "<id>-data/" in the working directory: a user's checkout or a container's /app filled up with one
    per test app id. So it goes under the system's temporary directory."""
    return Path(tempfile.gettempdir()) / "manireports-offload" / f"{app_id}-data"


def create_app(settings: Settings) -> faust.App:
    datadir = data_dir(settings.app_id)
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level of the path
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.kafka_bootstrap_servers.split(",")],
        store="memory://",  # tables are rebuilt from their changelog topics on start
        datadir=str(datadir),
        # faust-streaming's exactly_once has open duplicate/crash bugs (#323, #517): effects are idempotent.
        processing_guarantee="at_least_once",
        # A partition with no committed offset starts at its beginning (Faust's default, stated because
        # streams.transport.seek_to_committed seeks such a partition back there after Faust dropped records).
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        topic_replication_factor=settings.topic_replication,
        topic_partitions=settings.job_partitions,
        broker_session_timeout=settings.broker_session_timeout,
        broker_rebalance_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        # Read-ahead is bounded so the worker's memory does not grow with a job's size: a 1,000,000-learner job
        # puts ~100 MB of BatchDispatched on `batches` in one burst, which 32 MiB per-partition fetches and
        # Faust's default buffer of 4,096 records per stream pulled in ahead of the batch in hand (12 partitions
        # at 1 MiB still held 12 MiB of them). A record larger than the fetch size still arrives whole (Fetch v3+
        # returns the first batch whatever its size); 256 buffered records keep every agent fed (outcomes are
        # ~1 KB); job-requests and batches have smaller buffers of their own (streams.context).
        consumer_max_fetch_size=256 * 1024,
        stream_buffer_maxsize=256,
        # The fetch size does not bound what one poll decodes: the producer batches up to 1 MiB per partition
        # (eventlog.publisher), lz4 makes that ~150 KB on the wire, and a fetch returns its first batch whole.
        # Faust held a whole poll (every partition's fetch, decoded) until its last record was handed on, while
        # aiokafka fetched the next one: after a 300,000-learner job was cut, 636 BatchDispatched (12.9 MB of
        # values, ~1 MiB per `batches` partition) waited in one poll (counted in the worker's heap). 200 records
        # per poll bound that; the rest stay in aiokafka's fetched (compressed) data until asked for.
        broker_max_poll_records=MAX_POLL_RECORDS,
        producer_max_request_size=MAX_MESSAGE_BYTES,
        producer_acks=-1,
        # The tables' changelogs compress like every other record the project writes (eventlog.publisher).
        producer_compression_type=None if settings.kafka_compression == "none" else settings.kafka_compression,
        web_enabled=False,
        autodiscover=False,
    )
    use_fuller_fetches(app)  # before the first topic: fewer, fuller fetches (streams.transport)
    recovery_watch.register(app, settings.recovery_stall_seconds)  # a recovery that stops moving is mended
    health.register(app, settings)  # GET /health and /metrics on OFFLOAD_HEALTH_PORT (streams.health)
    ctx = StreamContext.build(app, settings)

    # Imported here so that importing streams.app stays cheap and free of side effects.
    from streams.agents import batches, company_settings, progress, routing, templates

    company_settings.register(app, ctx)
    templates.register(app, ctx)
    routing.register(app, ctx)
    batches.register(app, ctx)
    progress.register(app, ctx)
    from streams.agents import callbacks, delivery_watch, suppressions

    scheduler = callbacks.register(app, ctx)
    suppressions.register(app, ctx, scheduler)  # the suppression list, and Moodle told of unsubscribes
    from streams import expiry

    finished = expiry.register(app, ctx).finished  # forgets finished jobs' state after the retention period
    delivery_watch.register(app, ctx, finished)  # pauses a job whose bounce/complaint rate passes its thresholds

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # faust types the receiver narrower than it calls it
    async def _stop_services(app: faust.App, *args: Any, signal: Any, **kwargs: Any) -> None:
        await ctx.stop()

    return app


def __getattr__(name: str) -> Any:
    """``streams.app.app`` for ``faust -A streams.app``: built from the environment on first access."""
    if name == "app":
        global app
        app = create_app(settings_or_exit())
        return app
    raise AttributeError(name)
