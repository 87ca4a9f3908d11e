"""What a benchmark run measures besides time: CPU seconds and peak memory of processes (from /proc), the
machine's load, and optional py-spy profiles."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

_TICK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command name: state [0], ppid [1], utime [11], stime [12], and the CPU
    of its reaped children, cutime [13] and cstime [14]. OSError when the process is gone."""
    return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), in seconds: its own work, whatever else the machine
    is doing. OSError when it is gone."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_seconds_if_alive(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except OSError:
        return None


def postmaster_of(database_url: str) -> int | None:
    """The pid of the Postgres server behind ``database_url`` when it runs on this machine (a backend's parent)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    try:
        return int(_stat(row[0])[1])
    except OSError:
        return None


def _postgres_processes() -> list[tuple[int, list[str]]]:
    found = []
    for entry in PROC.iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "postgres":
                found.append((int(entry.name), _stat(entry.name)))
        except OSError:
            continue
    return found


def postgres_cpu_seconds(postmaster: int | None = None) -> float:
    """CPU seconds of one Postgres server: its postmaster, its live children, and the children it has reaped (the
    postmaster's cutime and cstime: a backend whose client disconnected counts after it ended). Without a
    postmaster, of every postgres process on the machine (other clients' work then counts too).

    A child reaped while /proc is read (listed, then gone before its stat was read) was counted neither live nor
    reaped when the postmaster's stat had been read first: a replay's backend ends as the replay returns, and
    bench/replay.py read 0.01 s of Postgres CPU for it in two runs of three. So the postmaster is read before and
    after its children, and the reading is taken again until no child was reaped in between (at most 100 times: a
    server reaping without pause, which a benchmark's own server is not, gets its last reading).
    """
    if postmaster is None:
        return sum(int(f[11]) + int(f[12]) for _, f in _postgres_processes()) / _TICK
    for _ in range(100):
        first = _stat(postmaster)
        children = [f for _, f in _postgres_processes() if int(f[1]) == postmaster]
        last = _stat(postmaster)
        if first[13:15] == last[13:15]:
            break
    reaped = sum(int(x) for x in last[11:15])
    return (reaped + sum(int(f[11]) + int(f[12]) for f in children)) / _TICK


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, all cores (idle includes iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / _TICK, idle / _TICK


def machine_busy_seconds() -> float:
    """Non-idle CPU seconds of the whole machine (all cores) from /proc/stat."""
    return machine_cpu()[0]


def stack_pids() -> dict[str, int]:
    """Kafka's pid and Postgres's postmaster of the stack in OFFLOAD_TEST_STACK_HOME, else none."""
    home = os.environ.get("OFFLOAD_TEST_STACK_HOME")
    if not home:
        return {}
    pids: dict[str, int] = {}
    for name in ("kafka", "postgres"):
        pidfile = Path(home) / "run" / f"{name}.pid"
        if pidfile.is_file():
            pids[name] = int(pidfile.read_text().split()[0])
    return pids


class CpuMeter:
    """CPU seconds used by named pids (plus Postgres and the whole machine) between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {name: cpu_seconds_if_alive(pid) or 0.0 for name, pid in self.pids.items()}
        out["bench(self)"] = cpu_seconds(os.getpid())
        out["postgres(approx: all backends, others too)"] = postgres_cpu_seconds()
        out["machine(all cores)"] = machine_busy_seconds()
        return out

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        return {name: round(end[name] - self._start.get(name, 0.0), 1) for name in end}


def load_avg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


class Profilers:
    """py-spy record (raw collapsed stacks) of named pids, when asked for and installed."""

    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, pids: dict[str, int]) -> None:
        if self.out_dir is None:
            return
        exe = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
        if exe is None:
            log("py-spy not found; no profiles")
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            self.procs.append(subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "50", "--nonblocking",
                 "--threads", "-o", str(self.out_dir / f"{name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
