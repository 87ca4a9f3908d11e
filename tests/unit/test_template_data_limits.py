"""Issue 11 finding 1: the limits that keep one request from making the worker write gigabytes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from api.errors import ApiError
from api.jobs import _limit_retries
from config.settings import Settings
from schemas.intake import template_data_problem
from security.seen import MemorySeen
from security.signing import RequestVerifier
from streams.app import create_app


@dataclass
class _State:  # the two things _limit_retries reads from ApiState
    settings: Settings
    verifier: RequestVerifier


def _retry(state: _State, job_id: str) -> str:
    try:
        asyncio.run(_limit_retries(state, job_id))  # type: ignore[arg-type]
    except ApiError as exc:
        assert exc.status == 429 and exc.retry_after
        return exc.code
    return "ok"


def test_retry_requests_of_one_job_are_capped_per_day_as_well_as_spaced():
    state = _State(Settings(environment="test", api_retry_interval=0, api_retries_per_job_per_day=3),
                   RequestVerifier({}, window=300, seen=MemorySeen()))
    assert [_retry(state, "job-1") for _ in range(5)] == ["ok", "ok", "ok", "retry_limit_reached",
                                                           "retry_limit_reached"]
    assert _retry(state, "job-2") == "ok"  # per job
    spaced = _State(Settings(environment="test", api_retry_interval=60, api_retries_per_job_per_day=3),
                    RequestVerifier({}, window=300, seen=MemorySeen()))
    assert [_retry(spaced, "job-1") for _ in range(2)] == ["ok", "retry_rate_limited"]
    assert Settings(environment="test").api_retries_per_job_per_day == 24


def test_template_data_over_the_limit_is_a_problem_with_a_code_the_worker_rejects_with():
    problem = template_data_problem({"intro": "x" * 70_000}, 64 * 1024)
    assert problem is not None
    assert (problem.field, problem.code) == ("template_data", "template_data_too_large")
    assert "65536" in problem.message


@pytest.mark.parametrize("codec", ["lz4", "gzip", "zstd"])
def test_the_workers_own_producer_compresses_like_the_publisher(codec):
    """The tables' changelogs are written by Faust's producer, not eventlog.publisher."""
    app = create_app(Settings(environment="test", kafka_compression=codec, app_id=f"compression-{codec}"))
    assert app.producer.compression_type == codec
    plain = create_app(Settings(environment="test", kafka_compression="none", app_id="compression-none"))
    assert plain.producer.compression_type is None
