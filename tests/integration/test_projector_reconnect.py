"""The projector that loses Postgres in the middle of a backlog (its connection killed while polls are being decoded
ahead of the transaction in flight) resumes at the offsets stored with the rows: every event is applied exactly
once, and the read models equal a replay that was never interrupted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg
import pytest

from eventlog.publisher import EventPublisher
from eventlog.topics import create_topics
from offload.replay import replay
from projections import read_models as models
from projections.projector import Projector
from schemas.events import BatchCompleted, BatchDispatched, Event, JobAccepted, JobCompleted, Recipient, RecipientSent
from tests.support.observe import READ_MODEL_TABLES, read_models

pytestmark = pytest.mark.integration
N, BATCH = 3_000, 200


def job_log(job_id: str) -> list[Event]:
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    batches = N // BATCH
    log: list[Event] = [JobAccepted(job_id=job_id, type="email", company_id=7, route="local", reason="test",
                                    provider="smtp", template_id="course_reminder", total_recipients=N,
                                    batch_size=BATCH, batch_count=batches, accepted_at=at)]
    for b in range(batches):
        users = range(1 + b * BATCH, 1 + (b + 1) * BATCH)
        log.append(BatchDispatched(job_id=job_id, batch_no=b, batch_count=batches, type="email", company_id=7,
                                   route="local", provider="smtp", template_id="course_reminder", dispatched_at=at,
                                   recipients=[Recipient(userid=u, email=f"l{u}@example.org") for u in users]))
        log += [RecipientSent(job_id=job_id, batch_no=b, userid=u, email=f"l{u}@example.org", provider="smtp",
                              message_id=f"<{u}@x>", attempts=1, sent_at=at) for u in users]
        log.append(BatchCompleted(job_id=job_id, batch_no=b, batch_count=batches, succeeded=BATCH, failed=0,
                                  completed_at=at))
    log.append(JobCompleted(job_id=job_id, total=N, succeeded=N, failed=0, completed_at=at))
    return log


async def publish(settings, events: list[Event]) -> None:
    publisher = EventPublisher(settings, source="urn:test")
    try:
        await publisher.send_all(events)
    finally:
        await publisher.stop()


@pytest.mark.parametrize("fresh", [False, True], ids=["catching up", "a replay into a schema it dropped"])
async def test_a_projector_cut_off_from_postgres_twice_applies_every_event_once(settings_factory, monkeypatch, fresh):
    # Into a schema it dropped, learners not seen yet go straight into job_recipients (recipients.Written); a
    # poll rolled back with the connection is read again, and its learners then take the upsert.
    settings = settings_factory()
    await create_topics(settings)
    events = job_log("cut-off-job")
    await publish(settings, events)

    backends: list[int] = []
    connect = models.open_read_models

    async def noting_backend(*args, **kwargs):
        conn = await connect(*args, **kwargs)
        backends.append(conn.info.backend_pid)
        return conn

    monkeypatch.setattr(models, "open_read_models", noting_backend)
    cut = Projector(settings, schema=f"{settings.projection_schema}_cut", max_records=60, fresh=fresh)
    task = asyncio.create_task(cut.run(until_caught_up=True))
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        for when in (len(events) // 4, len(events) // 2):
            while cut.stats.events < when:
                assert not task.done(), f"the projector finished before it could be cut off at {when} events"
                await asyncio.sleep(0.01)
            admin.execute("SELECT pg_terminate_backend(%s)", (backends[-1],))
    stats = await task
    monkeypatch.setattr(models, "open_read_models", connect)

    assert stats.reconnects >= 2 and len(backends) >= 3
    assert stats.built_apart > 0  # the decoder process built rows, fresh ones too in a replay
    assert stats.events == len(events)  # a rolled-back poll is counted (and applied) only when it commits
    await replay(settings, f"{settings.projection_schema}_clean")
    cut_rows = read_models(settings, f"{settings.projection_schema}_cut")
    clean_rows = read_models(settings, f"{settings.projection_schema}_clean")
    assert cut_rows["jobs"][0]["succeeded"] == N and cut_rows["jobs"][0]["status"] == "completed"
    for table in READ_MODEL_TABLES:
        if table != "company_cloud_settings":  # no settings in this log
            assert cut_rows[table] == clean_rows[table], table
