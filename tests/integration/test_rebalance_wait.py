"""A rebalance while one of two agents on a topic lags (streams.held_events), against a real broker: Faust alone
waits for ever for records it dropped from the lagging agent's buffer; the worker's transport waits only for the
record the agent still works on, finishes the rebalance, and every record is served after it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from devtools.processes import stop_child
from tests.support.observe import log_of, wait_for
from tests.support.stack import REPO
from tests.support.topics import create_topic

pytestmark = pytest.mark.integration

RECORDS = 5


def offsets(pattern: str, *paths: Path) -> set[int]:
    return {int(found) for path in paths for found in re.findall(pattern + r" (\d+)", log_of(path))}


def produce(settings) -> str:
    """A one-partition topic of RECORDS records; returns its name."""
    bootstrap, topic = settings.kafka_bootstrap_servers, f"{settings.topic_prefix}lagging"

    async def run() -> None:
        await create_topic(bootstrap, topic, 1)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for n in range(RECORDS):
                await producer.send_and_wait(topic, b"record %d" % n)
        finally:
            await producer.stop()

    asyncio.run(run())
    return topic


def start_worker(settings, topic: str, tmp_path: Path, name: str, hold: str, transport: str) -> subprocess.Popen:
    with open(tmp_path / f"{name}.log", "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.lagging_agents", settings.kafka_bootstrap_servers, settings.app_id,
             topic, str(tmp_path / "data"), hold, transport], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=out, stderr=subprocess.STDOUT)


def wait_for_the_lag(path: Path) -> None:
    """fast has taken every record while slow still holds the first: the others are in slow's buffer only."""
    wait_for(lambda: offsets("fast took", path) == set(range(RECORDS)) and "slow holds 0" in log_of(path),
             timeout=90, what="fast to take every record")


def start_two_workers(settings, tmp_path: Path, transport: str) -> tuple[list[subprocess.Popen], Path, Path]:
    """Worker 1 lagging as above; worker 2 started then (the rebalance it causes is what the tests are about)."""
    topic = produce(settings)
    first = start_worker(settings, topic, tmp_path, "first", "hold", transport)
    try:
        wait_for_the_lag(tmp_path / "first.log")
    except BaseException:  # the test never gets it to stop it
        first.kill()
        first.wait()
        raise
    second = start_worker(settings, topic, tmp_path, "second", "go", transport)
    return [first, second], tmp_path / "first.log", tmp_path / "second.log"


RELEASED = r"not waiting for 1 record\(s\) dropped unacked from the agents' buffers .*lagging\[0\]@4\s*$"


def test_a_rebalance_waits_only_for_the_record_an_agent_still_holds(settings_factory, tmp_path):
    settings = settings_factory()
    procs, first, second = start_two_workers(settings, tmp_path, "mended")
    try:
        wait_for(lambda: "revoke finished" in log_of(first), timeout=90, what="worker 1's revoke to finish")
        text = log_of(first)
        # Records 1-4 were acked by fast and dropped unacked from slow's buffer; 1-3 are gone with them, but fast's
        # stream still references its last event, record 4, which Faust would have waited for; record 0 was waited for.
        assert re.search(RELEASED, text, re.M), text[-3000:]
        assert "wait_empty: Waiting for tasks" not in text
        # At least once: the records slow never did are read again after the rebalance, by whichever worker got
        # the partition; none is lost.
        wait_for(lambda: offsets("slow done", first, second) == set(range(RECORDS)), timeout=90,
                 what="slow to have done every record")
        assert offsets("fast took", first, second) == set(range(RECORDS))
    finally:
        for proc in procs:
            stop_child(proc, timeout=30)
    assert procs[0].returncode >= 0, "worker 1 did not stop on SIGTERM"


def test_faust_alone_waits_for_ever_for_the_dropped_records(settings_factory, tmp_path):
    """What the first test is about: if this fails, Faust mends the wait itself and streams.held_events can go."""
    settings = settings_factory()
    procs, first, _ = start_two_workers(settings, tmp_path, "bare")
    try:
        # Faust says so after ten rounds of its wait (each at least a second), and goes on for ever.
        wait_for(lambda: "wait_empty: Waiting for tasks" in log_of(first), timeout=90, what="Faust's wait")
        assert re.search(r"wait_empty: Waiting for tasks \[\(1, <ConsumerMessage: TopicPartition\(topic='[^']+"
                         r"lagging', partition=0\) offset=\d>\)", log_of(first)), log_of(first)[-3000:]
        assert "revoke finished" not in log_of(first)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_worker_stopped_while_an_agent_lags_stops(settings_factory, tmp_path):
    # Faust's stop drops the buffers and waits the same way: a SIGTERM did not stop such a worker.
    settings = settings_factory()
    proc = start_worker(settings, produce(settings), tmp_path, "only", "hold", "mended")
    try:
        wait_for_the_lag(tmp_path / "only.log")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) >= 0
    finally:
        stop_child(proc, timeout=1)
    text = log_of(tmp_path / "only.log")
    assert re.search(RELEASED, text, re.M), text[-3000:]
    assert "slow done 0" in text and "wait_empty: Waiting for tasks" not in text
