"""Fixtures of the fault suite: the stack it may break, and a relay slow enough to break things under a job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.faults import ControllableStack, SlowMailSink, controllable_stack
from tests.support.stack import Infra


@pytest.fixture
def stack(infra: Infra) -> Iterator[ControllableStack]:
    """The running stack's broker and Postgres, which the test may restart and stop; both run again after it."""
    control = controllable_stack(infra)
    yield control
    control.start_postgres()  # whatever the test did, leave the stack running for the next test
    control.start_broker()


@pytest.fixture
def slow_sink() -> Iterator[SlowMailSink]:
    sink = SlowMailSink(delay=0.03)
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
