"""Jobs as Moodle sends them, for tests and benchmarks alike."""

from __future__ import annotations

from typing import Any


def job_payload(job_id: str, n: int, *, company_id: int = 7, template_id: str = "course_reminder",
                job_type: str = "email", start: int = 1, **extra: Any) -> dict[str, Any]:
    """A job as Moodle sends it, with n learners learner<i>@example.org."""
    return {
        "job_id": job_id,
        "type": job_type,
        "company_id": company_id,
        "recipients": [
            {"userid": i, "email": f"learner{i}@example.org", "firstname": f"First{i}", "lastname": f"Last{i}"}
            for i in range(start, start + n)
        ],
        "template_id": template_id,
        "template_data": {"course_name": "Fire Safety 101", "due_date": "2026-12-31",
                          "course_url": "https://moodle.example.org/course/view.php?id=7"},
        "callback_url": "https://moodle.example.org/local/offload/callback.php",
        "timestamp": 1795870000,
        "createdby": 2,
        **extra,
    }
