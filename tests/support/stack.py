"""Hands tests a real broker and database, and runs the real worker and projector as processes.

Where they come from, in order: ``KAFKA_BOOTSTRAP_SERVERS``/``DATABASE_URL`` when set; testcontainers when a
Docker engine answers; otherwise the project's own dev stack (``offload dev up``). If none can start, the
fixtures fail: integration tests are never skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from offload.config import Settings

REPO = Path(__file__).resolve().parents[2]
_ALIASES = {"kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS", "database_url": "DATABASE_URL"}


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


@contextmanager
def infrastructure() -> Iterator[Infra]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("DATABASE_URL"):
        yield Infra(os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["DATABASE_URL"], "environment")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka, PostgresContainer("postgres:16") as pg:
            url = pg.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")
            yield Infra(kafka.get_bootstrap_server(), url, "testcontainers")
        return
    from offload import devstack

    home = Path(os.environ.get("OFFLOAD_TEST_STACK_HOME", REPO / ".dev"))
    was_running = devstack.status(home).get("kafka") == "running"
    info = devstack.up(home, log=lambda *a: None)
    try:
        yield Infra(info.kafka_bootstrap, info.database_url, "dev stack")
    finally:
        if not was_running and not os.environ.get("OFFLOAD_TEST_KEEP_STACK"):
            devstack.down(home, log=lambda *a: None)


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new database for this test session, dropped afterwards."""
    name = f"offload_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a worker/projector process needs to build the same Settings."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        key = _ALIASES.get(name, f"OFFLOAD_{name.upper()}")
        env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class ServiceProcess:
    """``offload worker`` or ``offload projector`` in its own process, its output in a log file."""

    def __init__(self, command: str, settings: Settings, log_dir: Path, ready_text: str | None) -> None:
        self.command = command
        self.settings = settings
        self.log_path = log_dir / f"{command}-{uuid.uuid4().hex[:6]}.log"
        self.ready_text = ready_text
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> ServiceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
        env.update(settings_env(self.settings))
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "offload.cli", self.command, "-l", "info"],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        if self.ready_text:
            self.wait_for_log(self.ready_text, timeout)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float, start: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text()[start:]:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.command} did not log {text!r} within {timeout} s:\n{self.log_text()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no flush — a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()
