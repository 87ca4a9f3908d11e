"""The development SMTP sink (``python -m devtools.devmail``) run beside Kafka and Postgres.

Local-route email goes to an SMTP relay; in development that relay is this sink, which writes every
message it receives into ``home/mail`` instead of delivering it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from devtools.devstack.process import Log, ensure_port_free, running_pid, start_service, stop_service, tcp_answers

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
    argv = [sys.executable, "-m", "devtools.devmail", "--host", "127.0.0.1", "--port", str(port),
            "--spool", str(spool(home))]
    pid = start_service(argv, name="mail sink", address=f"127.0.0.1:{port}", pidfile=pidfile(home),
                        markers=markers(home), log_path=home / "logs" / "mail.log", ready=lambda: tcp_answers(port),
                        timeout=READY_TIMEOUT, interval=0.1, log=log, env=env)
    log(f"mail sink running (pid {pid}) on 127.0.0.1:{port}; spool {spool(home)}")
    return pid


def stop(home: Path, log: Log) -> None:
    stop_service(pidfile(home), markers(home), "mail sink", log)
