"""Renders certificates in a pool of processes: reportlab is CPU-bound (~100 PDFs/s/core), so it never runs on
the worker's event loop. One process per core for the life of the worker, fonts loaded once in each."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import date
from typing import Any

from content.certificates.templates import CertificateTemplate

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CertificateInput:
    """Everything one learner's certificate is made of; picklable for the render processes."""

    userid: int
    key: str
    code: str
    learner_name: str
    course_name: str
    completion_date: date
    verification_url: str
    template_data: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Rendering:
    """A chunk handed to the render processes: its result to come, and the pool it went to."""

    future: asyncio.Future[list[bytes | str]]
    executor: ProcessPoolExecutor


_renderer: Any = None


def _child_init(parent_pid: int) -> None:
    """Runs in each render process: leave Ctrl-C to the worker, and exit if the worker dies (even by SIGKILL)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child_renderer() -> Any:
    global _renderer
    if _renderer is None:
        from content.certificates.render import CertificateRenderer

        _renderer = CertificateRenderer()
    return _renderer


def render_chunk(template: CertificateTemplate, items: Sequence[CertificateInput]) -> list[bytes | str]:
    """PDF bytes per input, or an error text for one that failed; runs inside a render process."""
    renderer = _child_renderer()
    out: list[bytes | str] = []
    for item in items:
        try:
            out.append(renderer.render(
                template, learner_name=item.learner_name, course_name=item.course_name,
                completion_date=item.completion_date, certificate_code=item.code,
                verification_url=item.verification_url, template_data=item.template_data,
            ))
        except Exception as exc:  # noqa: BLE001 - one bad learner never sinks the chunk
            out.append(f"render error: {exc!r}"[:1000])
    return out


def _warm_up() -> int:
    """Loads reportlab and parses every font once, so the first real certificate is not the slow one."""
    from content.certificates.templates import CertificateTemplateStore as Store

    template = Store().get("course_completion", 1)
    sample = CertificateInput(1, "warm", "0000-0000-0000-0000", "Warm Up 王", "Warm-up", date(2026, 1, 1),
                              "https://example.org/verify/0000-0000-0000-0000", {})
    render_chunk(template, [sample])
    return os.getpid()


class RenderPool:
    """One process per core (or ``certificate_render_processes``) for the life of the worker."""

    def __init__(self, processes: int = 0) -> None:
        self.processes = processes or os.cpu_count() or 1
        self._executor: ProcessPoolExecutor | None = None

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn, not fork: the worker has threads (Kafka, boto3) that a forked child would inherit half-held.
        executor = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_child_init, initargs=(os.getpid(),))
        for _ in range(self.processes):
            executor.submit(_warm_up)
        return executor

    def _running(self) -> ProcessPoolExecutor:
        """The executor, started if there is none yet (before the first chunk, after a stop)."""
        if self._executor is None:
            self._executor = self._new_executor()
        return self._executor

    async def start(self) -> None:
        self._running()

    async def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    def pids(self) -> list[int]:
        # The executor is None before start/after stop, and _processes is None until its first task.
        return list(getattr(self._executor, "_processes", None) or {})

    def submit(self, template: CertificateTemplate, items: Sequence[CertificateInput]) -> Rendering:
        """Hands ``items`` to the render processes now: chunks render in the order they were handed over, so a
        batch handed over while the one before still renders queues behind it. Await it with :meth:`result`."""
        executor = self._running()
        return Rendering(asyncio.get_running_loop().run_in_executor(executor, render_chunk, template, list(items)),
                         executor)

    async def result(self, rendering: Rendering) -> list[bytes | str]:
        """The PDFs (or error texts) of a chunk handed over with :meth:`submit`."""
        try:
            return await rendering.future
        except BrokenProcessPool:
            # A render process died (OOM killer, a crash in C code): start fresh ones (once, however many chunks
            # the broken pool held) and let the batch retry.
            if rendering.executor is self._executor:
                log.error("a certificate render process died; restarting the pool")
                self._executor = self._new_executor()
                rendering.executor.shutdown(wait=False, cancel_futures=True)
            raise
