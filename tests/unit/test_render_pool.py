"""The worker's render processes: a chunk handed over renders there; a process that dies fails the chunks it held
and the pool starts fresh processes once, for the batch to be served again."""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool

import pytest

from content.certificates.pool import CertificateInput, RenderPool
from tests.support.certificates import builtin_template, render_inputs


def _input(userid: int) -> CertificateInput:
    kw = render_inputs(userid=userid)
    return CertificateInput(userid, f"company-1/job-pool/{userid}.pdf", kw["certificate_code"], kw["learner_name"],
                            kw["course_name"], kw["completion_date"], kw["verification_url"], kw["template_data"])


async def test_a_killed_render_process_fails_its_chunks_and_the_pool_restarts_once() -> None:
    pool = RenderPool(1)
    template = builtin_template()
    try:
        warm = await pool.result(pool.submit(template, [_input(1)]))
        assert isinstance(warm[0], bytes) and warm[0].startswith(b"%PDF")
        [pid] = pool.pids()
        long = pool.submit(template, [_input(n) for n in range(2, 200)])
        queued = pool.submit(template, [_input(200)])
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            await pool.result(long)
        fresh = pool._executor  # noqa: SLF001 - which executor the pool holds is what is checked
        assert fresh is not long.executor
        with pytest.raises(BrokenProcessPool):
            await pool.result(queued)  # held by the same broken pool: no second restart
        assert pool._executor is fresh  # noqa: SLF001
        again = await pool.result(pool.submit(template, [_input(1)]))
        assert again == warm  # same inputs, same bytes, from a new process
        assert pool.pids() and pid not in pool.pids()
    finally:
        await pool.stop()


async def test_chunks_render_in_the_order_handed_over() -> None:
    pool = RenderPool(1)
    template = builtin_template()
    try:
        first = pool.submit(template, [_input(n) for n in range(1, 40)])
        second = pool.submit(template, [_input(41)])
        await pool.result(second)
        assert first.future.done()  # one process: the chunk handed over first finished first
        assert all(isinstance(pdf, bytes) for pdf in await pool.result(first))
    finally:
        await pool.stop()
