"""A template problem as the API and JobRejected report it: a code a client can match, the field, words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.events import Problem


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """Why a template (or a job's use of one) cannot work: code, field, message, and any missing names."""

    code: str
    field: str
    message: str
    missing: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "field": self.field, "message": self.message}
        if self.missing:
            out["missing"] = list(self.missing)
        return out

    def as_problem(self) -> Problem:
        return Problem(field=self.field, message=self.message, code=self.code)


def refusal_code(problems: list[TemplateProblem]) -> str:
    """One problem kind: its own code; several kinds: ``invalid_job`` (as api.ingest does)."""
    codes = {p.code for p in problems}
    return codes.pop() if len(codes) == 1 else "invalid_job"
