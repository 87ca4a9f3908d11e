"""Runs ``offload worker`` / ``offload projector`` as child processes with a given Settings (demo, benchmarks,
tests), each with its output in a log file, stopped by pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from config.settings import Settings

_ALIASES = {"kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS", "database_url": "DATABASE_URL"}



def stop_child(proc: subprocess.Popen[Any], *, timeout: float) -> None:
    """SIGTERM a child process that still runs, wait up to ``timeout`` seconds for it, then SIGKILL it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs to build the same Settings."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if name == "api_keys":  # a dict of keys travels as the JSON the setting is read from
            value = json.dumps({key_id: {"secret": key.secret.get_secret_value(), "company_id": key.company_id}
                                for key_id, key in settings.api_keys.items()})
        if name == "dkim_keys":  # key files as paths, inline keys as the secret they are read from
            value = json.dumps({company: key.env_value() for company, key in settings.dkim_keys.items()})
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, dict | list) and name not in ("api_keys", "dkim_keys"):  # read back as JSON
            value = json.dumps(value, default=str)
        key = _ALIASES.get(name, f"OFFLOAD_{name.upper()}")
        env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


READY = {"worker": "Worker]: Ready", "projector": "projector started"}


class ServiceProcess:
    """``offload worker`` or ``offload projector`` in its own process, its output in a log file."""

    def __init__(self, command: str, settings: Settings, log_dir: Path, ready_text: str | None = None,
                 cwd: Path | None = None) -> None:
        self.command = command
        self.settings = settings
        self.log_path = log_dir / f"{command}-{uuid.uuid4().hex[:6]}.log"
        self.ready_text = ready_text
        self.proc: subprocess.Popen | None = None
        self.cwd = cwd

    def start(self, timeout: float = 90) -> ServiceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
        env.update(settings_env(self.settings))
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "offload.cli", self.command, "-l", "info"],
            cwd=self.cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
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

    def terminate(self, timeout: float) -> int:
        """SIGTERM, and the exit code once the process has stopped by itself; TimeoutError, the process still
        running, if it has not within ``timeout`` seconds."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.command} did not stop within {timeout} s of SIGTERM:\n"
                               f"{self.log_text()[-3000:]}") from None

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, timeout=30)
        if hasattr(self, "_log"):
            self._log.close()
