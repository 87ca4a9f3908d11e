"""A real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, and the API as its own process.

Never ``playwright install``: the browser is the distribution's, launched with a fresh profile per test and
stopped by the context manager (by its own handle, never by name).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from config.settings import Settings
from devtools.processes import stop_child
from tests.support.api import send
from tests.support.stack import REPO, settings_env

CHROMIUM = os.environ.get("OFFLOAD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium(viewport: tuple[int, int] = (1440, 900)) -> Iterator[object]:
    """A Playwright BrowserContext in a fresh user-data dir, closed (browser process included) on exit."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} not found: apt-get install -y chromium")
    profile = tempfile.mkdtemp(prefix="offload-chromium-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": viewport[0], "height": viewport[1]}, device_scale_factor=1,
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiProcess:
    """``python -m api`` on a free loopback port, configured from the environment like in production."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.port = free_port()
        self.log_path = log_dir / f"api-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> ApiProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
        env.update(settings_env(self.settings))  # api_keys travel as their JSON
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "api", "--port", str(self.port), "-l", "info"],
                                         cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if send(self.base_url, "GET", "/api/v1/health", b"", {}).status == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API did not answer within {timeout} s:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, timeout=30)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

