"""The benchmarks' count of a Postgres server's CPU (bench.measure.postgres_cpu_seconds) against a /proc whose
backend is reaped in the middle of the reading, as a replay's backend is when the replay returns: before, the
postmaster was read first and the backend found gone after, so its whole session was counted neither live nor
reaped (bench/replay.py read 0.01 s of Postgres CPU for a 50,000-event replay in two runs of three)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench import measure

POSTMASTER, BACKEND, OTHER = 10, 20, 30


def write(proc: Path, pid: int, comm: str, ppid: int, utime: int, cutime: int = 0) -> None:
    (proc / str(pid)).mkdir(exist_ok=True)
    (proc / str(pid) / "comm").write_text(comm + "\n")
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid} 1 1 0 -1 0 0 0 0 0 {utime} 5 {cutime} 0 20\n")


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(measure, "PROC", tmp_path)
    write(tmp_path, POSTMASTER, "postgres", 1, utime=5, cutime=100)
    write(tmp_path, BACKEND, "postgres", POSTMASTER, utime=30)
    write(tmp_path, OTHER, "kafka", 1, utime=1000)
    return tmp_path


@pytest.mark.parametrize("reaped_after", range(1, 5))
def test_a_backend_reaped_while_the_server_is_read_is_counted_once(proc: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    reaped_after: int):
    """Whichever read of /proc the reap falls after (the postmaster's or the backend's, in whatever order they are
    read), the backend counts once."""
    read = measure._stat
    calls = []

    def stat_then_reap(pid: int | str) -> list[str]:
        fields = read(pid)
        calls.append(int(pid))
        if len(calls) == reaped_after:  # the postmaster reaps the backend just after this read
            shutil.rmtree(proc / str(BACKEND))
            write(proc, POSTMASTER, "postgres", 1, utime=5, cutime=100 + 30 + 5)
        return fields

    monkeypatch.setattr(measure, "_stat", stat_then_reap)
    # postmaster 5 + 5, its reaped children 135, the backend 30 + 5 among them: counted once.
    assert measure.postgres_cpu_seconds(POSTMASTER) == pytest.approx(145 / os.sysconf("SC_CLK_TCK"))
    assert len(calls) >= reaped_after  # the reap did happen during the reading


def test_every_postgres_process_without_a_postmaster(proc: Path):
    assert measure.postgres_cpu_seconds() == pytest.approx((10 + 35) / os.sysconf("SC_CLK_TCK"))
