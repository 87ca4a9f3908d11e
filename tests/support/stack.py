"""Hands tests a real broker and database, and runs the real worker and projector as processes.

Where they come from, in order: ``KAFKA_BOOTSTRAP_SERVERS``/``DATABASE_URL`` when set; testcontainers when a
Docker engine answers; otherwise the project's own dev stack (``offload dev up``). If none can start, the
fixtures fail: integration tests are never skipped.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from devtools.processes import ServiceProcess, settings_env  # noqa: F401 - re-exported for tests

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    database_url: str
    source: str  # "environment" | "testcontainers" | "dev stack"


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


KAFKA_IMAGE = "apache/kafka:4.1.1"  # as docker-compose.yml


def kafka_container_env(port: int) -> dict[str, str]:
    """The environment of a one-node ``KAFKA_IMAGE`` broker that clients on this machine reach at 127.0.0.1:``port``
    (published on the same port): the dev stack's broker settings, spelled as the image reads them (``KAFKA_`` and
    the name upper-cased, dots to ``_``), listening on every interface of the container."""
    from devtools.devstack.kafka import broker_settings, new_cluster_id

    settings = broker_settings(port, 9093, Path("/var/lib/kafka/data"))  # the image's data directory
    settings.update({"listeners": f"PLAINTEXT://:{port},CONTROLLER://:9093",
                     "controller.quorum.voters": "1@localhost:9093"})
    env = {"KAFKA_" + name.upper().replace(".", "_"): value for name, value in settings.items()}
    env["CLUSTER_ID"] = new_cluster_id()
    return env


@contextmanager
def infrastructure() -> Iterator[Infra]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("DATABASE_URL"):
        yield Infra(os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["DATABASE_URL"], "environment")
        return
    if _docker_answers():
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs
        from testcontainers.postgres import PostgresContainer

        # testcontainers' KafkaContainer runs Confluent's images only (it refuses apache/kafka in KRaft mode, and
        # its start script is Confluent's): the image docker-compose.yml runs is started here as it is there.
        port = free_port()  # published on the same port, on loopback only: the broker names it to clients
        broker = DockerContainer(KAFKA_IMAGE).with_bind_ports(port, ("127.0.0.1", port))  # type: ignore[arg-type]
        for name, value in kafka_container_env(port).items():
            broker.with_env(name, value)
        with broker, PostgresContainer("postgres:16") as pg:
            wait_for_logs(broker, "Kafka Server started", timeout=120)
            url = pg.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")
            yield Infra(f"127.0.0.1:{port}", url, "testcontainers")
        return
    from devtools import devstack

    home = Path(os.environ.get("OFFLOAD_TEST_STACK_HOME", REPO / ".dev"))
    was_running = devstack.status(home).get("kafka") == "running"
    info = devstack.up(home, log=lambda *a: None)
    try:
        yield Infra(info.kafka_bootstrap, info.database_url, "dev stack")
    finally:
        if not was_running and not os.environ.get("OFFLOAD_TEST_KEEP_STACK"):
            devstack.down(home, log=lambda *a: None)


@contextmanager
def fresh_database(admin_url: str, encoding: str | None = None) -> Iterator[str]:
    """A new database for this test session (in ``encoding`` when named, else the server's default), dropped
    afterwards."""
    name = f"offload_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if encoding is None:
            conn.execute(f'CREATE DATABASE "{name}"')
        else:  # another encoding needs template0 and a locale that takes it
            conn.execute(f"CREATE DATABASE \"{name}\" ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' "
                         "TEMPLATE template0")
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        yield url
    finally:
        drop_database(admin_url, name)


def drop_database(admin_url: str, name: str, deadline_s: float = 60.0) -> None:
    """Drop a test database whoever is still connected to it.

    ``WITH (FORCE)`` run by a non-superuser refuses ("must be a member of the role whose process is being
    terminated") when an autovacuum worker happens to be in the database at that moment, which a busy session's
    database often is. A plain DROP DATABASE stops autovacuum workers itself, so: end our own role's sessions,
    then drop without FORCE, retrying until nobody is left.
    """
    stop_at = time.monotonic() + deadline_s
    with psycopg.connect(admin_url, autocommit=True) as conn:
        while True:
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
                if time.monotonic() > stop_at:
                    raise
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND usename = current_user AND pid <> pg_backend_pid()", (name,))
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                return
            except psycopg.errors.ObjectInUse:
                if time.monotonic() > stop_at:
                    raise
            time.sleep(0.5)


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def delete_test_topics(bootstrap: str, tags: set[str]) -> None:
    """Delete the topics (and Faust changelogs) of the tests that ran in this session, by their ``t<tag>`` names.

    Only this session's: a broker shared by several test runs keeps the others'. Without it a dev broker piles
    up partitions run after run until it runs out of file descriptors ("Too many open files").
    """
    if tags:
        asyncio.run(_delete_topics(bootstrap, tuple(f"t{tag}" for tag in tags)))


async def _delete_topics(bootstrap: str, prefixes: tuple[str, ...]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    try:
        await admin.start()
        names = [n for n in await admin.list_topics() if n.startswith(prefixes) and n[11:12] in (".", "-")]
        for start in range(0, len(names), 200):
            await admin.delete_topics(names[start:start + 200], timeout_ms=30000)
    except Exception as exc:  # cleanup only: the run's result stands, the leftovers are named
        warnings.warn(f"test topics not deleted: {exc!r}", stacklevel=1)
    finally:
        await admin.close()
