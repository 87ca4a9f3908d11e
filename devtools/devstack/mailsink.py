"""The development SMTP sink (``python -m devtools.devmail``) run beside Kafka and Postgres.

Local-route email goes to an SMTP relay; in development that relay is this sink, which writes every
message it receives into ``home/mail`` instead of delivering it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from devtools.devstack.process import (
    DevStackError,
    Log,
    ensure_port_free,
    log_tail,
    running_pid,
    spawn,
    stop_pid,
    tcp_answers,
    wait_until,
    write_pid,
)

READY_TIMEOUT = 60.0  # a deadline, not an estimate: the sink starts in ~1 s, far slower on a loaded machine
_PROJECT_ROOT = Path(__file__).resolve().parents[2]  # so `-m devtools.devmail` works without an install


def spool(home: Path) -> Path:
    return home / "mail"


def pidfile(home: Path) -> Path:
    return home / "run" / "mail.pid"


def markers(home: Path) -> list[str]:
    return ["devtools.devmail", str(spool(home))]


def running(home: Path) -> int | None:
    return running_pid(pidfile(home), markers(home))


def start(home: Path, port: int, log: Log) -> int:
    """Start the sink detached on 127.0.0.1:``port`` and wait until it accepts connections."""
    ensure_port_free(port, "mail sink")
    spool(home).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
    log_path = home / "logs" / "mail.log"
    argv = [sys.executable, "-m", "devtools.devmail", "--host", "127.0.0.1", "--port", str(port),
            "--spool", str(spool(home))]
    pid = spawn(argv, log_path, env=env)
    write_pid(pidfile(home), pid)
    ready = wait_until(lambda: tcp_answers(port) or running(home) is None, READY_TIMEOUT, 0.1)
    if not ready or running(home) is None:
        stop_pid(pid, markers(home), "mail sink", log)
        pidfile(home).unlink(missing_ok=True)
        raise DevStackError(f"mail sink did not start on 127.0.0.1:{port}. Last lines of {log_path}:\n"
                            + log_tail(log_path))
    log(f"mail sink running (pid {pid}) on 127.0.0.1:{port}; spool {spool(home)}")
    return pid


def stop(home: Path, log: Log) -> None:
    pid = running(home)
    if pid is not None:
        stop_pid(pid, markers(home), "mail sink", log)
    pidfile(home).unlink(missing_ok=True)
