"""A job is shown completed (or cancelled) only with its final counts: the projector can apply its JobCompleted
before the last outcomes that raise its counters (the topics are read in no fixed order), and whoever reads
"completed" through the API or the CLI takes the counts beside it as final."""

from __future__ import annotations

import asyncio
import io

import pytest

from offload.progress import _connect, job_row, list_jobs, watch
from tests.support.api import ApiServer, SignedClient, api_keys
from tests.support.read_model_rows import write

pytestmark = pytest.mark.integration

K7 = "k7-secret-0123456789abcdef"


async def _cli_status(settings, job_id: str) -> str:
    conn = await _connect(settings)
    try:
        row = await job_row(conn, job_id)
        assert row is not None
        return row["status"]
    finally:
        await conn.close()


@pytest.mark.parametrize("finished", ["completed", "cancelled"])
def test_a_finished_job_shows_as_running_until_its_last_outcomes_are_counted(settings_factory, finished):
    settings = settings_factory(api_keys=api_keys(k7=(K7, 7)))
    # As the read model stands when JobCompleted was applied first: 19 of 20 learners counted.
    asyncio.run(write(settings, "INSERT INTO jobs (job_id, type, company_id, status, total_recipients, succeeded, "
                               "failed) VALUES ('shown-job', 'email', 7, %s, 20, 17, 2)", (finished,)))
    with ApiServer(settings) as server:
        k7 = SignedClient(server.base_url, "k7", K7)

        def shown() -> tuple[str, int, str, str]:
            reply = k7.get("/api/v1/jobs/shown-job")
            assert reply.status == 200, reply.body
            listed = asyncio.run(list_jobs(settings, company_id=7, status=None, limit=5))[1].split()
            return (reply.body["status"], reply.body["progress"]["pending"], asyncio.run(_cli_status(settings,
                    "shown-job")), listed[3])

        assert shown() == ("running", 1, "running", "running")
        asyncio.run(write(settings, "UPDATE jobs SET suppressed = 1 WHERE job_id = 'shown-job'"))  # the last one
        assert shown() == (finished, 0, finished, finished)


def test_offload_job_says_what_the_job_waits_for_while_it_does(settings_factory):
    """``offload job`` (the demo's progress line too) ends its line with the job's wait, and blanks it once over."""
    settings = settings_factory()
    waits = "waiting for smtp-relay: smtp unavailable: smtp 127.0.0.1:2525: [Errno 111] Connection refused"
    asyncio.run(write(settings, "INSERT INTO jobs (job_id, type, company_id, status, route, provider, "
                                "total_recipients, succeeded, failed, timecreated, pacing) VALUES ('held-job', "
                                "'email', 7, 'running', 'local', 'smtp', 20, 5, 0, now(), %s)", (waits,)))
    held = io.StringIO()
    assert asyncio.run(watch(settings, "held-job", timeout=1.0, out=held)) == 1  # not completed within it
    assert "pending 15  " in held.getvalue() and f"/s  {waits}" in held.getvalue()

    asyncio.run(write(settings, "UPDATE jobs SET pacing = NULL, status = 'completed', succeeded = 20, "
                                "timecompleted = now() WHERE job_id = 'held-job'"))
    done = io.StringIO()
    assert asyncio.run(watch(settings, "held-job", timeout=5.0, out=done)) == 0
    assert "waiting for" not in done.getvalue() and "held-job: completed in" in done.getvalue()
