"""Pure intake logic: validate a raw job request, list every problem, drop repeated learners, cut batches."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas.events import JobRequested, Problem, Recipient


@dataclass(frozen=True, slots=True)
class Refusal:
    """One problem with a job: a code a client can match, the field, and words for a person."""

    code: str
    field: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """Either a valid job (with repeated userids removed) or the job id and every problem found."""

    job: JobRequested | None
    job_id: str | None
    company_id: int | None
    problems: tuple[Problem, ...] = ()
    duplicates_removed: int = 0


# Deeper JSON is refused as a whole. json.loads here reads ~990 levels, but the events are read back with
# pydantic's JSON parser, which stops at 200: a job nested 200-990 deep would be accepted and then be a record no
# reader can decode. 64 is far beyond any real template_data.
MAX_JSON_DEPTH = 64


def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether a parsed JSON value nests objects/arrays more than ``limit`` levels (``{}`` is one level).
    Iterative, so the check itself cannot hit the recursion limit."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _identify(raw: object) -> tuple[str | None, int | None]:
    if not isinstance(raw, dict):
        return None, None
    job_id = raw.get("job_id")
    company_id = raw.get("company_id")
    return (
        job_id if isinstance(job_id, str) and 0 < len(job_id) <= 128 else None,
        company_id if isinstance(company_id, int) and not isinstance(company_id, bool) else None,
    )


def _problems(exc: ValidationError, limit: int = 50) -> tuple[Problem, ...]:
    errors = exc.errors(include_url=False, include_input=False)
    found = [Problem(field=".".join(str(p) for p in e["loc"]) or "(root)", message=e["msg"]) for e in errors]
    if len(found) > limit:
        found = found[:limit] + [Problem(field="(root)", message=f"{len(errors) - limit} more problems")]
    return tuple(found)


def validate_request(value: bytes, *, max_recipients: int) -> IntakeResult:
    """Validate one job-requests record. Raises ValueError when it is not JSON or names no job id."""
    try:
        raw = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:  # nested ~1,000 deep: not a job, and no reason to crash over it
        raise ValueError(f"not JSON: nested more than {MAX_JSON_DEPTH} levels deep") from None
    if nested_deeper_than(raw, MAX_JSON_DEPTH):
        raise ValueError(f"not JSON: nested more than {MAX_JSON_DEPTH} levels deep")
    job_id, company_id = _identify(raw)
    if job_id is None:
        raise ValueError("no usable job_id: a job that cannot be named cannot be rejected either")
    try:
        job = JobRequested.model_validate(raw)
    except ValidationError as exc:
        return IntakeResult(None, job_id, company_id, _problems(exc))
    if len(job.recipients) > max_recipients:
        problem = Problem(
            field="recipients",
            message=f"{len(job.recipients)} recipients exceeds the limit of {max_recipients} per job",
        )
        return IntakeResult(None, job_id, company_id, (problem,))
    unique = unique_recipients(job.recipients)
    removed = len(job.recipients) - len(unique)
    if removed:
        job = job.model_copy(update={"recipients": unique})
    return IntakeResult(job, job.job_id, job.company_id, (), removed)


def template_data_problem(data: dict[str, Any], limit: int) -> Problem | None:
    """template_data larger than ``limit`` bytes of compact JSON, as a problem to report."""
    size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
    if size <= limit:
        return None
    return Problem(field="template_data", code="template_data_too_large",
                   message=f"template_data is {size} bytes of JSON; the limit is {limit} (template_data_max_bytes): "
                           "put per-learner values on the recipients instead")


def unique_recipients(recipients: Sequence[Recipient]) -> list[Recipient]:
    """Keep the first occurrence of each userid: a learner listed twice is served once."""
    seen: set[int] = set()
    out: list[Recipient] = []
    for recipient in recipients:
        if recipient.userid not in seen:
            seen.add(recipient.userid)
            out.append(recipient)
    return out


def batches(recipients: Sequence[Recipient], size: int) -> Iterator[list[Recipient]]:
    """Consecutive slices of ``size`` recipients; the last may be shorter. None for no recipients."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    for start in range(0, len(recipients), size):
        yield list(recipients[start : start + size])


def batch_count(n: int, size: int) -> int:
    return -(-n // size)
