"""What the fault suite breaks on purpose: the stack's broker and Postgres, a slow SMTP relay that can go
away and come back on the same port, and a Moodle that answers only after an outage.

The suite must control the very stack the tests run against, so :func:`controllable_stack` finds its home:
the dev stack the fixtures started (``OFFLOAD_TEST_STACK_HOME`` or ``.dev``), or, when the tests were pointed
at a stack by ``KAFKA_BOOTSTRAP_SERVERS``/``DATABASE_URL``, the dev stack home named by
``OFFLOAD_TEST_STACK_HOME`` whose recorded ports are those. Anything else (testcontainers, a shared broker)
fails with a message that says what to set: fault tests are never skipped.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from devtools import devstack
from devtools.devmail import DevMailSink
from devtools.devstack import kafka, postgres
from devtools.devstack.process import stack_lock
from tests.support.moodle_receiver import MoodleReceiver
from tests.support.stack import REPO, Infra


def _cmdlines() -> list[bytes]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                found.append((proc / "cmdline").read_bytes())
            except OSError:
                continue
    return found


def _locked(path: Path) -> bool:
    """True when another process holds a POSIX record lock on ``path`` (as the JVM's FileChannel.tryLock)."""
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.lockf(handle, fcntl.LOCK_UN)
        return False


class StackNotControllable(AssertionError):
    """The tests run against a stack the fault suite cannot stop or restart."""


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@dataclass(frozen=True)
class ControllableStack:
    """The dev stack under ``home``: restart its broker, stop and start its Postgres."""

    home: Path

    def restart_broker(self) -> None:
        self.stop_broker()
        self.start_broker()

    def stop_broker(self) -> None:
        with stack_lock(self.home):
            kafka.stop(self.home, log=lambda *a: None)
            self._wait_until_broker_gone()

    def start_broker(self) -> None:
        ports = json.loads((self.home / "run" / "stack.json").read_text())
        with stack_lock(self.home):
            if kafka.running(self.home) is None:
                self._wait_until_broker_gone()
                libs, _ = kafka.ensure_jars(self.home, lambda *a: None)
                kafka.start(self.home, libs, int(ports["kafka_port"]), int(ports["controller_port"]),
                            lambda *a: None)

    def _wait_until_broker_gone(self) -> None:
        """Until no JVM of this stack runs and none holds its log directory's lock.

        A broker that got SIGTERM can still be writing its metadata log when its pid no longer looks like ours
        (seen: the next broker started 1 s early and both wrote ``quorum-state``; the new one died). Kafka
        locks ``log.dirs/.lock`` with a POSIX record lock, which ``lockf`` sees.
        """
        marker = str(kafka.props_path(self.home)).encode()
        lock = self.home / "kafka" / "data" / ".lock"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not any(marker in cmdline for cmdline in _cmdlines()) and not _locked(lock):
                return
            time.sleep(0.2)
        raise StackNotControllable(f"the broker of {self.home} did not go away within 60 s")

    def stop_postgres(self) -> None:
        with stack_lock(self.home):
            postgres.stop(self.home, log=lambda *a: None)

    def start_postgres(self) -> None:
        port = int(json.loads((self.home / "run" / "stack.json").read_text())["pg_port"])
        with stack_lock(self.home):
            if postgres.running(self.home) is None:
                postgres.start(self.home, postgres.bindir(self.home), port, log=lambda *a: None)


def controllable_stack(infra: Infra) -> ControllableStack:
    named = os.environ.get("OFFLOAD_TEST_STACK_HOME")
    home = Path(named) if named else REPO / ".dev"
    if not home.is_absolute():
        home = REPO / home
    state = home / "run" / "stack.json"
    if infra.source == "testcontainers":
        raise StackNotControllable("the fault suite needs the project's dev stack, not testcontainers: unset "
                                   "DOCKER_HOST or run it through scripts/test.sh / .ci/run")
    try:
        recorded = json.loads(state.read_text())
    except FileNotFoundError:
        raise StackNotControllable(
            f"the tests run against {infra.kafka_bootstrap} / {infra.database_url}, but no dev stack is recorded "
            f"at {state}; set OFFLOAD_TEST_STACK_HOME to the home of the stack those addresses belong to "
            f"(`offload dev up --home DIR`)") from None
    kafka_port, pg_port = _port(infra.kafka_bootstrap), urlsplit(infra.database_url).port
    if (recorded["kafka_port"], recorded["pg_port"]) != (kafka_port, pg_port):
        raise StackNotControllable(
            f"the dev stack at {home} listens on Kafka :{recorded['kafka_port']} and Postgres "
            f":{recorded['pg_port']}, but the tests run against {infra.kafka_bootstrap} / {infra.database_url}: "
            f"set OFFLOAD_TEST_STACK_HOME to the home of that stack, or unset KAFKA_BOOTSTRAP_SERVERS/"
            f"DATABASE_URL to use the dev stack")
    status = devstack.status(home)
    if status["kafka"] != "running" or status["postgres"] != "running":
        raise StackNotControllable(f"the dev stack at {home} is not running ({status})")
    return ControllableStack(home)


class SlowMailSink(DevMailSink):
    """The SMTP relay with a latency per message (so a job lasts long enough to break things under it), and
    which can go away (connections refused, sessions dropped) and come back on the same port."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(port=0, keep_messages=False)
        self.delay = delay

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)

    def go_away(self) -> None:
        self._port = self.port  # come back where the workers expect it
        self.stop()

    def come_back(self) -> None:
        self.start()


class MoodleAfterOutage(MoodleReceiver):
    """Moodle's callback endpoint on a fixed port, started only when its outage is over."""

    def __init__(self, secrets: dict[str, str], port: int) -> None:
        super().__init__(secrets)
        self.fixed_port = port

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.fixed_port).start()
        self.port = self.fixed_port


class Timeline:
    """When each fault happened and how long the system took to get past it, printed at the end."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.faults: list[dict[str, Any]] = []

    def mark(self, fault: str, **details: Any) -> dict[str, Any]:
        entry = {"fault": fault, "at_s": round(time.monotonic() - self.started, 1), **details}
        self.faults.append(entry)
        return entry

    def since(self, entry: dict[str, Any]) -> float:
        return round(time.monotonic() - self.started - entry["at_s"], 1)
