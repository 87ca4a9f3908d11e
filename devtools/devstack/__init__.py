"""Start and stop a real development stack — Apache Kafka (KRaft), PostgreSQL and an SMTP sink — on a
machine without Docker.

Everything lives under one ``home`` directory (data, logs, pidfiles), every process listens on 127.0.0.1
only, and ``up`` is idempotent: services that already run (pidfile + live pid + our command line) are
reused. ``down`` stops exactly the processes the stack started; data stays for the next ``up``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from devtools.devstack import kafka, mailsink, postgres
from devtools.devstack.process import DevStackError, Log, ensure_port_free, stack_lock

__all__ = ["DevStackError", "StackInfo", "down", "restart_kafka", "status", "up"]


@dataclass(frozen=True)
class StackInfo:
    """Where the running stack answers, and the pids of its processes."""

    kafka_bootstrap: str
    database_url: str
    smtp_host: str
    smtp_port: int
    home: Path
    pids: dict[str, int] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The settings as environment variables understood by ``config.settings.Settings``."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "DATABASE_URL": self.database_url,
            "OFFLOAD_SMTP_HOST": self.smtp_host,
            "OFFLOAD_SMTP_PORT": str(self.smtp_port),
            # A development machine: certificates may carry codes under the public default secret.
            "OFFLOAD_CERTIFICATE_CODE_SECRET_ALLOW_DEFAULT": "true",
        }


def _state_file(home: Path) -> Path:
    return home / "run" / "stack.json"


def up(
    home: Path,
    *,
    kafka_port: int = 19092,
    controller_port: int = 19093,
    pg_port: int = 15432,
    smtp_port: int = 2525,
    start_mail_sink: bool = True,
    log: Log = print,
) -> StackInfo:
    """Start (or reuse) Kafka, Postgres and, optionally, the mail sink; return where they answer."""
    home = Path(home).resolve()
    for sub in ("run", "logs", "kafka"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    with stack_lock(home):
        return _up(home, kafka_port, controller_port, pg_port, smtp_port, start_mail_sink, log)


def _up(
    home: Path, kafka_port: int, controller_port: int, pg_port: int, smtp_port: int, start_mail_sink: bool,
    log: Log,
) -> StackInfo:
    started, timings, cold = time.monotonic(), {}, False
    pids: dict[str, int] = {}

    # Refuse foreign ports before the slow steps (jar fetch, format), not after them.
    if kafka.running(home) is None:
        ensure_port_free(kafka_port, "kafka")
        ensure_port_free(controller_port, "kafka controller")
    step = time.monotonic()
    libs, fetched = kafka.ensure_jars(home, log)
    timings["kafka_jars_s"], cold = time.monotonic() - step, cold or fetched
    pid = kafka.running(home)
    if pid is None:
        kafka.write_properties(home, kafka_port, controller_port)
        step = time.monotonic()
        cold = kafka.format_storage(home, libs, log) or cold
        timings["kafka_format_s"] = time.monotonic() - step
        step = time.monotonic()
        pid = kafka.start(home, libs, kafka_port, controller_port, log)
        timings["kafka_start_s"] = time.monotonic() - step
    else:
        kafka_port = _recorded(home, "kafka_port", kafka_port)
        controller_port = _recorded(home, "controller_port", controller_port)
        log(f"kafka already running (pid {pid})")
    pids["kafka"] = pid

    bins = postgres.bindir(home)
    pid = postgres.running(home)
    if pid is None:
        step = time.monotonic()
        cold = postgres.ensure_initdb(home, bins, log) or cold
        timings["postgres_initdb_s"] = time.monotonic() - step
        step = time.monotonic()
        pid = postgres.start(home, bins, pg_port, log)
        timings["postgres_start_s"] = time.monotonic() - step
    else:
        pg_port = _recorded(home, "pg_port", pg_port)
        postgres.ensure_database(pg_port)
        log(f"postgres already running (pid {pid})")
    pids["postgres"] = pid

    if start_mail_sink:
        pid = mailsink.running(home)
        if pid is None:
            step = time.monotonic()
            pid = mailsink.start(home, smtp_port, log)
            timings["mail_start_s"] = time.monotonic() - step
        else:
            smtp_port = _recorded(home, "smtp_port", smtp_port)
            log(f"mail sink already running (pid {pid})")
        pids["mail"] = pid

    info = StackInfo(
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        database_url=postgres.database_url(pg_port),
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        home=home,
        pids=pids,
    )
    _state_file(home).write_text(json.dumps(
        {"kafka_port": kafka_port, "controller_port": controller_port, "pg_port": pg_port,
         "smtp_port": smtp_port}, indent=2) + "\n")
    timings["total_s"] = time.monotonic() - started
    if any(key.endswith("_start_s") for key in timings):  # a pure reuse is not a start
        _record_timings(home, "cold_start" if cold else "warm_start", timings)
    for key, value in info.env().items():
        log(f"{key}={value}")
    return info


def _recorded(home: Path, key: str, default: int) -> int:
    """The port a running service was started with (the caller's default may differ)."""
    try:
        return int(json.loads(_state_file(home).read_text())[key])
    except (FileNotFoundError, KeyError, ValueError):
        return default


def _record_timings(home: Path, kind: str, timings: dict[str, float]) -> None:
    """Keep the durations of the last cold and last warm start in ``home/run/timings.json``."""
    path = home / "run" / "timings.json"
    try:
        recorded = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        recorded = {}
    recorded[kind] = {"at": datetime.now(UTC).isoformat(timespec="seconds"),
                      **{key: round(value, 2) for key, value in timings.items()}}
    path.write_text(json.dumps(recorded, indent=2) + "\n")


def down(home: Path, log: Log = print) -> None:
    """Stop exactly the processes this stack started (by their pidfiles); data stays on disk."""
    home = Path(home).resolve()
    if not home.is_dir():
        return
    with stack_lock(home):
        mailsink.stop(home, log)
        kafka.stop(home, log)
        postgres.stop(home, log)


def status(home: Path) -> dict[str, str]:
    """``running`` or ``stopped`` for each service of the stack."""
    home = Path(home).resolve()
    return {
        "kafka": "running" if kafka.running(home) else "stopped",
        "postgres": "running" if postgres.running(home) else "stopped",
        "mail": "running" if mailsink.running(home) else "stopped",
    }


def restart_kafka(home: Path, log: Log = print) -> int:
    """Stop and start the broker with the same configuration and data; return the new pid."""
    home = Path(home).resolve()
    with stack_lock(home):
        kafka.stop(home, log)
        libs, _ = kafka.ensure_jars(home, log)
        port = _recorded(home, "kafka_port", 19092)
        controller = _recorded(home, "controller_port", 19093)
        kafka.write_properties(home, port, controller)
        step = time.monotonic()
        pid = kafka.start(home, libs, port, controller, log)
        _record_timings(home, "kafka_restart", {"kafka_start_s": time.monotonic() - step})
        return pid
