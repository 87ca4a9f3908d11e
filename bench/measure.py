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

_TICK = os.sysconf("SC_CLK_TCK")


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


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def postgres_cpu_seconds() -> float:
    """CPU of every postgres process on the machine (server + backends); others' tests count too."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        total += cpu_seconds(int(entry.name)) or 0.0
    return total


def machine_busy_seconds() -> float:
    """Non-idle CPU seconds of the whole machine (all cores) from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / _TICK


class CpuMeter:
    """CPU seconds used by named pids (plus Postgres and the whole machine) between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) or 0.0 for name, pid in self.pids.items()}
        out["bench(self)"] = cpu_seconds(os.getpid()) or 0.0
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
