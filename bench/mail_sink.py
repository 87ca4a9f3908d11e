"""The benchmark's SMTP sink (``devtools.devmail``) in a process of its own, so it never shares the benchmark's
GIL, and counting what it received from its spool file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from devtools.processes import stop_child

_REPO = Path(__file__).resolve().parents[1]  # devtools.devmail is imported from the checkout


class SinkProcess:
    def __init__(self, spool: Path, log_path: Path) -> None:
        self.spool = spool
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> SinkProcess:
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.devmail", "--host", "127.0.0.1", "--port", "0",
             "--spool", str(self.spool)],
            cwd=_REPO, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "devmail listening on 127.0.0.1:PORT spool=..."
        if "listening on" not in line:
            raise RuntimeError(f"mail sink did not start: {line!r} {self.log_path.read_text()[-2000:]}")
        self.port = int(line.split()[3].rsplit(":", 1)[1])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def received_file(self) -> Path:
        return self.spool / "received.jsonl"

    def size(self) -> int:
        try:
            return self.received_file.stat().st_size
        except FileNotFoundError:
            return 0

    def lines_since(self, offset: int) -> list[dict[str, Any]]:
        with open(self.received_file, "rb") as f:
            f.seek(offset)
            data = f.read()
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, timeout=15)
        if hasattr(self, "_log"):
            self._log.close()


class LineCounter:
    """Counts spool lines as they arrive, reading only the new bytes each time."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path, self.offset, self.count = path, offset, 0

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.count
        complete = data.rfind(b"\n") + 1
        self.count += data.count(b"\n", 0, complete)
        self.offset += complete
        return self.count
