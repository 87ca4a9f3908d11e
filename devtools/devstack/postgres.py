"""A loopback-only PostgreSQL cluster in the stack's home, from Debian's server binaries.

When run as root the cluster belongs to the OS user ``postgres`` (the server refuses to run as root);
Debian's ``postgresql`` package creates that user. Authentication is ``trust``: acceptable only because
the cluster listens on 127.0.0.1 and a socket directory inside home, for development.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
from pathlib import Path

from devtools.devstack.process import (
    DevStackError,
    Log,
    ensure_port_free,
    log_tail,
    read_pid,
    running_pid,
    stop_pid,
    write_pid,
)

ROLE = "offload"
DATABASE = "offload"
PG_USER = "postgres"  # OS user when running as root, and the cluster's superuser name


def database_url(port: int) -> str:
    return f"postgresql://{ROLE}@127.0.0.1:{port}/{DATABASE}"


def data_dir(home: Path) -> Path:
    return home / "postgres"


def socket_dir(home: Path) -> Path:
    return home / "run" / "pgsock"


def pidfile(home: Path) -> Path:
    return home / "run" / "postgres.pid"


def markers(home: Path) -> list[str]:
    """What identifies our postmaster in /proc/<pid>/cmdline: our data and socket directories."""
    return [str(data_dir(home)), str(socket_dir(home))]


def bindir(home: Path | None = None) -> Path:
    """The server binaries: those of the cluster's own major version when ``home`` has one, else the
    newest ``/usr/lib/postgresql/<major>/bin``."""
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists()]
    candidates = [p for p in candidates if p.parent.name.isdigit()]
    if not candidates:
        raise DevStackError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin. "
            "Install Debian's server package: apt-get install -y postgresql"
        )
    if home is not None and (data_dir(home) / "PG_VERSION").exists():
        major = (data_dir(home) / "PG_VERSION").read_text().strip()
        for path in candidates:
            if path.parent.name == major:
                return path
        raise DevStackError(
            f"{data_dir(home)} was created by PostgreSQL {major}, whose binaries are missing: "
            f"apt-get install -y postgresql-{major} (or remove the directory to start afresh)"
        )
    return max(candidates, key=lambda p: int(p.parent.name))


def _as_root() -> bool:
    return os.geteuid() == 0


def _pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        raise DevStackError(
            "running as root but there is no OS user 'postgres' to own the cluster; "
            "apt-get install -y postgresql creates it"
        ) from None


def _run_as_owner(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a Postgres tool as the cluster owner: ``postgres`` under root, else the current user."""
    if _as_root():
        argv = ["runuser", "-u", PG_USER, "--", *argv]
    return subprocess.run(argv, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _give_to_owner(path: Path, log: Log) -> None:
    """Make ``path`` owned by the cluster owner and every ancestor traversable by it (root only)."""
    if not _as_root():
        return
    user = _pg_user()
    os.chown(path, user.pw_uid, user.pw_gid)
    _make_traversable(path, user, log)


def _make_traversable(path: Path, user: pwd.struct_passwd, log: Log) -> None:
    # Checked again before every pg_ctl call: e.g. pytest resets /tmp/pytest-of-root to 0700 per session.
    for parent in path.parents:
        mode = parent.stat().st_mode
        if parent.stat().st_uid != user.pw_uid and not mode & stat.S_IXOTH:
            # e.g. pytest's 0700 /tmp/pytest-of-root: add search (not read) permission only.
            log(f"chmod o+x {parent} so the postgres user can reach its data directory")
            os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)


def ensure_initdb(home: Path, bins: Path, log: Log) -> bool:
    """Create the cluster once (True if it ran); an existing PG_VERSION means it is there."""
    data = data_dir(home)
    for path in (home / "run", home / "logs"):
        path.mkdir(parents=True, exist_ok=True)
    sock, logfile = socket_dir(home), home / "logs" / "postgres.log"
    sock.mkdir(parents=True, exist_ok=True)
    logfile.touch()
    _give_to_owner(sock, log)
    _give_to_owner(logfile, log)
    if (data / "PG_VERSION").exists():
        return False
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    _give_to_owner(data, log)
    log(f"initdb {data}")
    # --auth=trust: the cluster is reachable only on 127.0.0.1 and a socket inside home.
    result = _run_as_owner([str(bins / "initdb"), "-D", str(data), "--username", PG_USER, "--auth=trust",
                            "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"])
    if result.returncode != 0:
        raise DevStackError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
    return True


def start(home: Path, bins: Path, port: int, log: Log) -> int:
    """Start the cluster with ``pg_ctl start -w``, create role and database, return the postmaster pid."""
    ensure_port_free(port, "postgres")
    if _as_root():
        _make_traversable(data_dir(home), _pg_user(), log)
    logfile = home / "logs" / "postgres.log"
    options = f"-p {port} -k {socket_dir(home)} -c listen_addresses=127.0.0.1"
    result = _run_as_owner([str(bins / "pg_ctl"), "-D", str(data_dir(home)), "-l", str(logfile),
                            "-o", options, "-w", "-t", "60", "start"])
    if result.returncode != 0:
        raise DevStackError(f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n"
                            f"Last lines of {logfile}:\n{log_tail(logfile)}")
    pid = read_pid(data_dir(home) / "postmaster.pid")
    if pid is None:
        raise DevStackError(f"postgres started but wrote no postmaster.pid in {data_dir(home)}")
    write_pid(pidfile(home), pid)
    log(f"postgres running (pid {pid}) on 127.0.0.1:{port}; log {logfile}")
    ensure_database(port)
    return pid


def running(home: Path) -> int | None:
    """The pid of our postmaster if it runs (postmaster.pid is the source of truth), else None."""
    pid = running_pid(data_dir(home) / "postmaster.pid", markers(home))
    if pid is not None:
        write_pid(pidfile(home), pid)
    return pid


def ensure_database(port: int) -> None:
    """Create the ``offload`` login role and database owned by it if missing, then check it connects."""
    import psycopg
    from psycopg import sql

    admin = f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(ROLE)))
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                sql.Identifier(DATABASE), sql.Identifier(ROLE)))
    with psycopg.connect(database_url(port), connect_timeout=10) as conn:
        conn.execute("SELECT 1")


def stop(home: Path, log: Log) -> None:
    """``pg_ctl stop -m fast`` as the cluster owner, only if our postmaster runs; drop the pidfile."""
    pid = running(home)
    if pid is not None:
        log(f"stopping postgres (pid {pid})")
        if _as_root():
            _make_traversable(data_dir(home), _pg_user(), log)
        result = _run_as_owner([str(bindir(home) / "pg_ctl"), "-D", str(data_dir(home)),
                                "-m", "fast", "-w", "-t", "30", "stop"])
        if result.returncode != 0:
            # SIGINT is Postgres' own "fast shutdown", what pg_ctl -m fast would have sent.
            log(f"pg_ctl stop failed ({(result.stderr or result.stdout).strip()}); signalling pid {pid}")
            stop_pid(pid, markers(home), "postgres", log, sig=signal.SIGINT)
        if running(home) is not None:
            raise DevStackError(f"postgres (pid {pid}) did not stop; see {home / 'logs' / 'postgres.log'}")
    pidfile(home).unlink(missing_ok=True)
