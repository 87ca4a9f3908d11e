"""Reading a worker's or projector's own ``/health`` and ``/metrics`` (OFFLOAD_HEALTH_PORT, resilience.probe)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def _get(port: int, path: str) -> str | None:
    """The body, or None while the process does not answer (yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            assert response.status == 200
            return response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None


def health(port: int) -> dict[str, Any] | None:
    body = _get(port, "/health")
    return None if body is None else json.loads(body)


def metrics(port: int) -> list[str]:
    body = _get(port, "/metrics")
    assert body is not None, f"nothing answers /metrics on port {port}"
    return body.splitlines()


class When:
    """For ``wait_for``: the health of ``port`` once its ``status`` is this and ``check`` is up (or not); keeps
    the last answer for the failure message."""

    def __init__(self, port: int, status: str, check: str, up: bool) -> None:
        self.port, self.status, self.check, self.up = port, status, check, up
        self.last: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any] | None:
        h = self.last = health(self.port)
        if h is None or h["status"] != self.status or self.check not in h["checks"]:
            return None
        return h if h["checks"][self.check]["up"] is self.up else None

    def __repr__(self) -> str:
        return f"health of :{self.port} to be {self.status} with {self.check} up={self.up} (last: {self.last})"
