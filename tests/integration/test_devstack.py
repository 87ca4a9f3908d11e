"""The Docker-free development stack: a second, private stack in a temporary home on free ports.

Checks that Kafka and Postgres really answer, that topic data survives a broker restart (the log is the
system of record), that ``up`` is idempotent, and that ``down`` stops exactly the processes it started.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from devtools import devstack
from devtools.devstack import kafka as devkafka
from devtools.devstack.process import cmdline, is_ours
from tests.support.topics import create_topic

pytestmark = pytest.mark.integration


class Ports(TypedDict):
    kafka_port: int
    controller_port: int
    pg_port: int


def _free_ports(count: int) -> list[int]:
    """Ports the kernel hands out right now; held open together so they are distinct."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def stack_home() -> Iterator[tuple[Path, Ports]]:
    """A private home and ports; whatever the test leaves running is stopped afterwards.

    Not pytest's tmp_path: every pytest session resets /tmp/pytest-of-<user> to 0700 and prunes old
    directories, which would cut the ``postgres`` OS user off from a data directory in use.
    """
    home = Path(tempfile.mkdtemp(prefix="offload-devstack-test-"))
    kafka_port, controller_port, pg_port = _free_ports(3)
    try:
        yield home, Ports(kafka_port=kafka_port, controller_port=controller_port, pg_port=pg_port)
    finally:
        devstack.down(home, log=lambda _: None)
        shutil.rmtree(home, ignore_errors=True)


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    await create_topic(bootstrap, topic, 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"job-1")
    finally:
        await producer.stop()


async def _read_one(bootstrap: str, topic: str) -> bytes | None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"devstack-test-{uuid.uuid4().hex}")
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout=20)
        value: bytes | None = message.value
        return value
    finally:
        await consumer.stop()


async def test_stack_survives_broker_restart_and_stops_only_its_own(
    stack_home: tuple[Path, Ports],
) -> None:
    home, ports = stack_home
    info = await asyncio.to_thread(devstack.up, home, **ports, start_mail_sink=False)

    assert devkafka.broker_ready(ports["kafka_port"])
    with psycopg.connect(info.database_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("offload", "offload")
    assert devstack.status(home) == {"kafka": "running", "postgres": "running", "mail": "stopped"}

    topic = f"devstack-test-{uuid.uuid4().hex[:8]}"
    await _produce(info.kafka_bootstrap, topic, b'{"job_id": "job-1"}')

    new_kafka_pid = await asyncio.to_thread(devstack.restart_kafka, home)
    assert new_kafka_pid != info.pids["kafka"]
    assert not is_ours(info.pids["kafka"], devkafka.markers(home))
    assert await _read_one(info.kafka_bootstrap, topic) == b'{"job_id": "job-1"}'

    again = await asyncio.to_thread(devstack.up, home, **ports, start_mail_sink=False)
    assert again.pids == {"kafka": new_kafka_pid, "postgres": info.pids["postgres"]}
    assert again.database_url == info.database_url and again.kafka_bootstrap == info.kafka_bootstrap

    await asyncio.to_thread(devstack.down, home)
    assert devstack.status(home) == {"kafka": "stopped", "postgres": "stopped", "mail": "stopped"}
    for pid in again.pids.values():
        line = cmdline(pid)
        assert line is None or str(home) not in line, f"pid {pid} still runs: {line}"
    assert not any((home / "run").glob("*.pid"))
    assert (home / "kafka" / "data" / "meta.properties").exists()  # data stays
