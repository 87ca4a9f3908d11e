"""A rebalance while one of two agents on a topic lags (streams.held_events), against a real broker: Faust alone
waits for ever for records it dropped from the lagging agent's buffer; the worker's transport waits only for the
record the agent still works on, finishes the rebalance, and every record is served after it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from devtools.processes import stop_child
from tests.support.observe import wait_for
from tests.support.stack import REPO
from tests.support.topics import create_topic

pytestmark = pytest.mark.integration

RECORDS = 5


def log_of(path: Path) -> str:
    return path.read_text(errors="replace")


def offsets(pattern: str, *paths: Path) -> set[int]:
    return {int(found) for path in paths for found in re.findall(pattern + r" (\d+)", log_of(path))}


def start_two_workers(settings, tmp_path: Path, transport: str) -> tuple[list[subprocess.Popen], Path, Path]:
    """Worker 1 with the lagging agent holding the first record; worker 2 started once the other agent has taken
    every record (the rebalance it causes is what the test is about)."""
    bootstrap, topic = settings.kafka_bootstrap_servers, f"{settings.topic_prefix}lagging"

    async def produce() -> None:
        await create_topic(bootstrap, topic, 1)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for n in range(RECORDS):
                await producer.send_and_wait(topic, b"record %d" % n)
        finally:
            await producer.stop()

    asyncio.run(produce())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs: list[subprocess.Popen] = []
    paths = tmp_path / "first.log", tmp_path / "second.log"
    for path, hold in zip(paths, ("hold", "go"), strict=True):
        with open(path, "wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.support.lagging_agents", bootstrap, settings.app_id, topic,
                 str(tmp_path / "data"), hold, transport], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
        if hold == "hold":
            wait_for(lambda: offsets("fast took", paths[0]) == set(range(RECORDS))
                     and "slow holds 0" in log_of(paths[0]), timeout=90, what="fast to take every record")
    return procs, paths[0], paths[1]


def test_a_rebalance_waits_only_for_the_record_an_agent_still_holds(settings_factory, tmp_path):
    settings = settings_factory()
    procs, first, second = start_two_workers(settings, tmp_path, "mended")
    try:
        wait_for(lambda: "revoke finished" in log_of(first), timeout=90, what="worker 1's revoke to finish")
        text = log_of(first)
        # Records 1-4 were acked by fast and dropped unacked from slow's buffer; 1-3 are gone with them, but fast's
        # stream still references its last event, record 4, which Faust waited for; record 0 was waited for.
        assert re.search(r"rebalance: 1 record\(s\) no stream holds any longer .*lagging\[0\]@4\s*$", text, re.M), \
            text[-3000:]
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
