"""Shared fixtures: a real broker and database for the session, fresh names per test, real processes."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from devtools.devmail import DevMailSink
from devtools.processes import READY, ServiceProcess
from eventlog.topics import create_topics
from streams.app import data_dir
from tests.support.jobs import job_payload
from tests.support.moto_server import MotoServer, moto_server
from tests.support.stack import REPO, Infra, delete_test_topics, fresh_database, infrastructure

# The tags of the settings made in this session: their topics, and the worker's Faust directories, are deleted when
# the session ends.
_TAGS: set[str] = set()


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with infrastructure() as found:
        yield found
        delete_test_topics(found.kafka_bootstrap, _TAGS)
        for tag in _TAGS:
            shutil.rmtree(data_dir(f"t{tag}"), ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(infra: Infra) -> Iterator[str]:
    with fresh_database(infra.database_url) as url:
        yield url


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        yield server


@pytest.fixture
def mail_sink() -> Iterator[DevMailSink]:
    with DevMailSink(port=0) as sink:
        yield sink


@pytest.fixture
def settings_factory(infra: Infra, database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings with fresh topic names, consumer group/app id and projection schema for this test."""

    def make(**overrides: Any) -> Settings:
        tag = uuid.uuid4().hex[:10]
        _TAGS.add(tag)
        values: dict[str, Any] = dict(
            environment="test",
            kafka_bootstrap_servers=infra.kafka_bootstrap,
            database_url=database_url,
            topic_prefix=f"t{tag}.",
            app_id=f"t{tag}",
            projection_schema=f"t_{tag}",
            api_seen_schema=f"t_{tag}",  # each test's replay memory its own too
            job_partitions=3,
            batch_partitions=6,
            outcome_partitions=3,
            broker_session_timeout=6.0,
            retry_base_delay=0.05,
            retry_max_delay=0.5,
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def topics_for() -> Callable[[Settings], dict[str, str]]:
    def create(settings: Settings) -> dict[str, str]:
        return asyncio.run(create_topics(settings, with_changelogs=True))

    return create


@pytest.fixture
def processes(request: pytest.FixtureRequest) -> Iterator[Callable[..., ServiceProcess]]:
    """Start ``offload worker``/``offload projector`` processes; all are stopped after the test.

    Their logs stay in ``.dev/test-logs/<test>/`` (not pytest's rotating tmp dirs) for diagnosing a failure.
    """
    started: list[ServiceProcess] = []
    log_dir = REPO / ".dev" / "test-logs" / request.node.name
    log_dir.mkdir(parents=True, exist_ok=True)

    def start(command: str, settings: Settings, *, wait: bool = True) -> ServiceProcess:
        proc = ServiceProcess(command, settings, log_dir, READY[command] if wait else None, cwd=REPO)
        started.append(proc)  # before start(): a process that never gets ready is stopped too
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def job_factory() -> Callable[..., dict[str, Any]]:
    return job_payload

