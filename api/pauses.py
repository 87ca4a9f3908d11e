"""Paused jobs as the API and the admin pages show them: why the job paused, with the figures, or that it resumed.

Read from the audit log's latest JobPaused / JobResumed of the job (both on the jobs topic, keyed by job id, so
their offsets order them); resuming is a JobResumed event the worker acts on, like a cancel.
"""

from __future__ import annotations

from typing import Any

from api.store import ReadStore
from schemas.events import JobPaused, JobResumed

PAUSED, RESUMED = JobPaused.ce_type, JobResumed.ce_type


async def pause_of(store: ReadStore, job_id: str) -> dict[str, Any] | None:
    return pause_view(await store.latest_of(job_id, (PAUSED, RESUMED)))


def pause_view(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """None when the job never paused; else whether it is paused now, why, and the figures it paused on."""
    if row is None:
        return None
    detail = row["detail"]
    if row["event_type"] == RESUMED:
        return {"paused": False, "resumed_at": detail["resumed_at"], "resumed_by": detail["requested_by"]}
    figures = ("sent", "bounced", "complained", "bounce_rate", "complaint_rate", "bounce_threshold",
               "complaint_threshold", "min_sample")
    return {"paused": True, "reason": detail["reason"], "paused_at": detail["paused_at"],
            "figures": {name: detail[name] for name in figures}}
