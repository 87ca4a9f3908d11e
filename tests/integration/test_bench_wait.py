"""How a benchmark waits for its job (bench.jobs): a job whose sends wait for a provider's daily quota stops the
wait at once with the reason, and a job that is merely slow times out saying where it stood."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.jobs import JobWaiting, _wait_completed
from tests.support.read_model_rows import write

pytestmark = pytest.mark.integration

QUOTA = "SES 24-hour quota reached: 200 of Max24HourSend 200 (this worker's share 100%)"


async def _job_row(settings, job_id: str, pacing: str) -> None:
    await write(settings, "INSERT INTO jobs (job_id, status, total_recipients, succeeded, pacing) "
                "VALUES (%s, 'running', 500, 200, %s)", (job_id, pacing))


def test_a_job_waiting_for_a_quota_ends_the_wait_with_the_reason(settings_factory):
    settings = settings_factory()
    asyncio.run(_job_row(settings, "quota-job", f"paused: {QUOTA}"))
    with pytest.raises(JobWaiting) as waiting:  # not the TimeoutError of a wait that ran its 120 s
        asyncio.run(_wait_completed(settings, "quota-job", 120, time.monotonic(), None))
    assert (waiting.value.job_id, waiting.value.reason) == ("quota-job", f"its sends wait: {QUOTA}")


def test_a_slow_job_times_out_saying_its_status_and_pacing(settings_factory):
    settings = settings_factory()
    asyncio.run(_job_row(settings, "slow-job", "ses: 14.0/s"))
    with pytest.raises(TimeoutError, match="not completed within 1 s; .*status running, pacing ses: 14.0/s"):
        asyncio.run(_wait_completed(settings, "slow-job", 1, time.monotonic(), None))
