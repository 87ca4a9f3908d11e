"""Unit tests build ``Settings`` from their arguments alone: the shell's configuration must not reach them.

A developer whose shell holds the dev stack's variables (``offload dev up`` prints them to export, among them
``OFFLOAD_CERTIFICATE_CODE_SECRET_ALLOW_DEFAULT=true``) saw two hardening tests fail: ``Settings()`` read the
opt-in from the environment. Each unit test now starts with no ``OFFLOAD_*``, ``DATABASE_URL`` or
``KAFKA_BOOTSTRAP_SERVERS`` set; a test that wants one sets it with ``monkeypatch.setenv``.
"""

from __future__ import annotations

import os

import pytest

_READ_BY_SETTINGS = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")


@pytest.fixture(autouse=True)
def _no_configuration_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OFFLOAD_") or name in _READ_BY_SETTINGS:
            monkeypatch.delenv(name)
