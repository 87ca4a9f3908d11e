"""A replay's start-up runs its Kafka and Postgres sides at once (projections/startup.py). Whichever fails, the
replay ends with that error, its decoder process and its connections gone, and nothing half-written: a failing
DDL leaves the schema as it was (the drop is in the same transaction), and a second replay mends the rest."""

from __future__ import annotations

import asyncio
import multiprocessing

import psycopg
import pytest

from bench.replay import job_log, write_log
from offload.replay import replay
from projections import audit
from projections import read_models as models
from projections.projector import Projector
from tests.support.observe import READ_MODEL_TABLES, read_models, wait_for

pytestmark = pytest.mark.integration


class Connections:
    """Every Postgres connection the code under test opens (psycopg.AsyncConnection.connect), to check that each
    was closed when it returned: exact, where counting the server's sessions races with backends still exiting."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened: list[psycopg.AsyncConnection] = []
        connect = psycopg.AsyncConnection.connect

        async def recorded(*args, **kwargs):
            conn = await connect(*args, **kwargs)
            self.opened.append(conn)
            return conn

        monkeypatch.setattr(psycopg.AsyncConnection, "connect", recorded)

    def all_closed(self) -> bool:
        return all(conn.closed for conn in self.opened)


def schema_exists(settings, schema: str) -> bool:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def no_decoder_process() -> bool:
    return not [p for p in multiprocessing.active_children() if p.is_alive()]


def decoder_gone() -> None:
    wait_for(no_decoder_process, timeout=30, what="the decoder process to exit")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_failing_ddl_ends_the_replay_and_leaves_the_schema_as_it_was(settings_factory, topics_for,
                                                                      monkeypatch) -> None:
    settings = settings_factory()
    topics_for(settings)
    written = asyncio.run(write_log(settings, job_log("startup-job", 300)))
    schema = f"{settings.projection_schema}_r"
    assert asyncio.run(replay(settings, schema)).events == written
    before = read_models(settings, schema)

    # Fails when it runs, after the drop and most of the DDL have (a syntax error would stop the string before
    # any of it ran).
    monkeypatch.setattr(audit, "DDL", audit.DDL + "\nCREATE TABLE audit_broken (id int REFERENCES no_such_table);")
    connections = Connections(monkeypatch)
    with pytest.raises(psycopg.errors.UndefinedTable, match="no_such_table"):
        asyncio.run(replay(settings, schema))
    decoder_gone()
    assert connections.opened and connections.all_closed()
    after = read_models(settings, schema)  # not dropped: the drop rolled back with the DDL
    for table in READ_MODEL_TABLES:
        assert after[table] == before[table], table

    monkeypatch.undo()
    assert asyncio.run(replay(settings, schema)).events == written
    again = read_models(settings, schema)
    for table in READ_MODEL_TABLES:
        assert again[table] == before[table], table


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_missing_topic_ends_the_replay_with_its_name_and_closes_what_postgres_opened(settings_factory,
                                                                                       monkeypatch) -> None:
    settings = settings_factory()  # no topics created
    connections = Connections(monkeypatch)
    with pytest.raises(RuntimeError, match=r"topic .* does not exist: run `offload topics create` first"):
        asyncio.run(replay(settings, f"{settings.projection_schema}_r"))
    decoder_gone()
    assert connections.opened and connections.all_closed()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_while_kafka_is_unreachable_a_replay_retries_and_ends_clean_when_interrupted(settings_factory,
                                                                                     monkeypatch) -> None:
    settings = settings_factory(kafka_bootstrap_servers="127.0.0.1:1")  # nothing listens there
    connections = Connections(monkeypatch)
    projector = Projector(settings, schema=f"{settings.projection_schema}_r", fresh=True)

    async def interrupted() -> None:
        task = asyncio.create_task(projector.run(until_caught_up=True))
        while projector.stats.reconnects < 2:
            assert not task.done(), task
            await asyncio.sleep(0.05)
        assert not no_decoder_process()  # forked, waiting for the consumer
        task.cancel()  # as Ctrl-C does to `offload replay`
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    decoder_gone()
    assert connections.all_closed()  # (none need have opened: the consumer's failure may cancel the connect)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_replay_whose_first_connection_fails_after_its_first_poll_applies_every_event_once(
        settings_factory, topics_for, monkeypatch) -> None:
    settings = settings_factory()
    topics_for(settings)
    written = asyncio.run(write_log(settings, job_log("early-poll-job", 2_000)))
    clean = f"{settings.projection_schema}_clean"
    asyncio.run(replay(settings, clean))

    opened = models.open_read_models
    polled: list[int] = []

    async def fails_once_after_the_first_poll(*args, **kwargs):
        if not polled:
            while not projector._early:  # the first poll, read while the read models are created
                await asyncio.sleep(0.005)
            polled.append(sum(len(records) for records in projector._early.values()))
            raise psycopg.OperationalError("connection lost while creating the read models")
        return await opened(*args, **kwargs)

    monkeypatch.setattr(models, "open_read_models", fails_once_after_the_first_poll)
    projector = Projector(settings, schema=f"{settings.projection_schema}_cut", fresh=True)
    stats = asyncio.run(projector.run(until_caught_up=True))
    assert polled and polled[0] > 0 and stats.reconnects == 1
    assert stats.events == written  # the first poll was dropped with the failure, and read again once
    cut, rows = read_models(settings, f"{settings.projection_schema}_cut"), read_models(settings, clean)
    for table in READ_MODEL_TABLES:
        assert cut[table] == rows[table], table
