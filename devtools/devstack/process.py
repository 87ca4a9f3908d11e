"""Process bookkeeping for the development stack: pidfiles, ownership checks, port checks, stopping.

Every service is started detached and remembered by a pidfile. Before trusting a pidfile we check that
the pid is alive AND that its ``/proc/<pid>/cmdline`` carries our markers (e.g. the path of our own
``server.properties``), so a recycled pid or somebody else's broker is never reused or killed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

Log = Callable[[str], object]

# Popen objects of the services this interpreter started; kept so they are reaped (no zombie) when
# stopped and never garbage-collected with a "still running" ResourceWarning.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class DevStackError(RuntimeError):
    """The development stack could not be started or stopped; the message says what to do."""


@contextlib.contextmanager
def stack_lock(home: Path) -> Iterator[None]:
    """Serialise up/down/restart on one home, so two callers (CLI, test fixtures) never start twice."""
    (home / "run").mkdir(parents=True, exist_ok=True)
    with open(home / "run" / "devstack.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def argv_of(pid: int) -> list[str] | None:
    """The argument vector of a live, non-zombie process, else None."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)  # reaped: our own child has exited
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return None
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return None
    args = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    return args or None


def cmdline(pid: int) -> str | None:
    """The command line of a live process as one space-joined string (for messages), else None."""
    args = argv_of(pid)
    return " ".join(args) if args else None


def is_ours(pid: int, markers: Sequence[str]) -> bool:
    """True when ``pid`` is alive and every marker is one whole argument of its command line.

    Whole arguments, not substrings: ``/a/home/...`` must not match a stack in ``/b/a/home/...``.
    """
    child = _CHILDREN.get(pid)
    if child is not None:
        # Our own child is ours while it runs. Its command line cannot tell: the parent learns that exec()
        # succeeded before the kernel has set up the new program's arguments, and /proc/<pid>/cmdline reads
        # empty meanwhile. On a loaded machine a start was seen to take that window for "exited at once".
        if child.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    args = argv_of(pid)
    return args is not None and all(marker in args for marker in markers)


def read_pid(pidfile: Path) -> int | None:
    """The pid stored in ``pidfile`` (first line, as in Postgres' postmaster.pid), or None."""
    try:
        first = pidfile.read_text().splitlines()[0].strip()
        return int(first)
    except (FileNotFoundError, IndexError, ValueError):
        return None


def running_pid(pidfile: Path, markers: Sequence[str]) -> int | None:
    """The pid from ``pidfile`` if that process is alive and ours, else None."""
    pid = read_pid(pidfile)
    return pid if pid is not None and is_ours(pid, markers) else None


def write_pid(pidfile: Path, pid: int) -> None:
    """Write ``pid`` atomically, so a reader never sees a half-written file."""
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    tmp = pidfile.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pidfile)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on ``host:port`` (we only ever bind loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def ensure_port_free(port: int, service: str) -> None:
    """Refuse to start ``service`` on a port held by a process that is not one of ours."""
    if port_in_use(port):
        raise DevStackError(
            f"{service}: port 127.0.0.1:{port} is already in use by a process this stack did not start "
            f"(see `ss -ltnp 'sport = :{port}'`). Stop it, or choose another port."
        )


def tcp_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def spawn(argv: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None) -> int:
    """Start ``argv`` in its own session (so Ctrl-C in the caller's terminal does not reach it),
    output appended to ``log_path``; return its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_pid(
    pid: int, markers: Sequence[str], name: str, log: Log, timeout: float = 30.0,
    sig: signal.Signals = signal.SIGTERM,
) -> None:
    """Send ``sig`` to ``pid`` (only if it is still ours), wait up to ``timeout`` s, then SIGKILL."""
    if not is_ours(pid, markers):
        return
    log(f"stopping {name} (pid {pid})")
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if wait_until(lambda: not is_ours(pid, markers), timeout, 0.1):
        return
    log(f"{name} (pid {pid}) did not stop within {timeout:.0f} s; sending SIGKILL")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_until(lambda: not is_ours(pid, markers), 10.0, 0.1)


def start_service(argv: Sequence[str], *, name: str, address: str, pidfile: Path, markers: Sequence[str],
                  log_path: Path, ready: Callable[[], bool], timeout: float, interval: float, log: Log,
                  env: dict[str, str] | None = None) -> int:
    """Start ``argv`` detached, remember it in ``pidfile`` and wait until ``ready()``; return its pid.

    A service that exits, or is not ready within ``timeout`` seconds, is stopped and forgotten, and the error
    carries the last lines of its log.
    """
    pid = spawn(argv, log_path, env=env)
    write_pid(pidfile, pid)
    log(f"{name} starting (pid {pid}) on {address}; log {log_path}")

    def alive() -> bool:
        return running_pid(pidfile, markers) is not None

    if wait_until(lambda: ready() or not alive(), timeout, interval) and alive():
        return pid
    why = "exited" if not alive() else f"did not answer within {timeout:.0f} s"
    stop_pid(pid, markers, name, log)
    pidfile.unlink(missing_ok=True)
    raise DevStackError(f"{name} {why}. Last lines of {log_path}:\n{log_tail(log_path)}")


def stop_service(pidfile: Path, markers: Sequence[str], name: str, log: Log) -> None:
    """Stop the service ``pidfile`` names if it is still ours (SIGTERM, SIGKILL after 30 s); drop the pidfile."""
    pid = running_pid(pidfile, markers)
    if pid is not None:
        stop_pid(pid, markers, name, log)
    pidfile.unlink(missing_ok=True)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])
