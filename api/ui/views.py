"""How the admin UI shows read-model rows: templates, time format, job views, history lines, safe links."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2

from api.store import JOB_STATUSES, progress
from projections.jobs import FINISHED, JobStatus
from schemas.events import JobCancelled

PREFIX = "/ui"
HERE = Path(__file__).parent
JOB_TYPES = ("email", "certificate")
STATUSES = JOB_STATUSES
CANCELLED = JobCancelled.ce_type

# Fixed notices the pages show after a POST (the query carries only the key, never text to reflect).
NOTICES = {
    "retry_requested": ("ok", "Retry requested: the failed recipients will be sent again as a new run."),
    "cancel_requested": ("ok", "Cancel requested: recipients not yet served will not be sent."),
    "job_finished": ("error", "The job has already finished; it cannot be cancelled."),
    "resume_requested": ("ok", "Resume requested: the waiting batches will be sent; nobody is sent twice."),
    "job_not_paused": ("error", "Only a paused job can be resumed."),
    "job_not_finished": ("error", "Only a completed job can be retried."),
    "nothing_to_retry": ("error", "The job has no failed recipients to retry."),
    "settings_saved": ("ok", "Settings saved."),
    "suppression_added": ("ok", "Learner added to the suppression list; it shows here once the projector applies it."),
    "suppression_removed": ("ok", "Learner removed from the suppression list; it shows here once applied."),
    "suppression_invalid": ("error", "Nothing was changed: give a learner id, a scope ('*', 'bulk' or a list id) "
                                     "and a reason."),
    "settings_pending": ("ok", "Settings change sent; it appears here as soon as the projector applies it."),
    "signed_out": ("ok", "You are signed out."),
    "template_published": ("ok", "Template published: jobs accepted from now on use the new version."),
    "template_retired": ("ok", "Template retired: new jobs use the built-in template of this id."),
    "template_unknown": ("error", "This company has published no template of this id."),
}


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["dt"] = format_time
    env.filters["number"] = lambda n: f"{n:,}" if isinstance(n, int) else ("-" if n is None else str(n))
    env.filters["short_type"] = short_type
    env.globals["prefix"] = PREFIX
    return env


def format_time(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def job_view(row: dict[str, Any], errors: list[dict[str, Any]], cancel_requested: bool) -> dict[str, Any]:
    view = progress(row, errors)
    p = view["progress"]
    total = p["total"] or 0
    p["sent_pct"] = round(100.0 * p["sent"] / total, 2) if total else 0.0
    p["failed_pct"] = round(100.0 * p["failed"] / total, 2) if total else 0.0
    p["done"] = p["sent"] + p["failed"] + p["suppressed"]
    # Asked for but not yet effective (the job ends as "cancelled" once the worker has stopped it).
    view["cancel_requested"] = cancel_requested and row["status"] not in FINISHED
    view["can_retry"] = row["status"] == JobStatus.COMPLETED and bool(row["failed"])  # as POST /api/v1/jobs/{id}/retry
    view["can_cancel"] = row["status"] not in FINISHED and not cancel_requested
    view["timecreated"], view["timestarted"] = row["timecreated"], row["timestarted"]
    view["timecompleted"] = row["timecompleted"]
    return view


def live(job: dict[str, Any]) -> dict[str, Any]:
    """What the live page needs of a job: counters, state and which buttons apply."""
    p = job["progress"]
    return {"status": job["status"], "cancel_requested": job["cancel_requested"], "can_retry": job["can_retry"],
            "can_cancel": job["can_cancel"], "total": p["total"], "sent": p["sent"], "failed": p["failed"],
            "suppressed": p["suppressed"],
            "pending": p["pending"], "done": p["done"], "percent": p["percent"], "sent_pct": p["sent_pct"],
            "failed_pct": p["failed_pct"], "rate": p["rate_per_second"],
            "started": format_time(job["timestarted"]), "finished": format_time(job["timecompleted"]),
            "pacing": job["pacing"], "errors": job["errors"]}


_SUMMARY_FIELDS = {
    "job.accepted": ("route", "provider", "reason", "total_recipients", "batch_count"),
    "job.rejected": ("problems",),
    "job.fell-back-to-local": ("from_provider", "to_provider", "reason"),
    "batch.waiting-for-quota": ("batch_no", "provider", "reason"),
    "batch.waiting-for-dependency": ("batch_no", "dependency", "reason"),
    "job.completed": ("run", "succeeded", "failed", "cancelled"),
    "job.cancelled": ("reason",),
    "job.retry-requested": ("only_retryable",),
    "job.paused": ("reason",),
    "job.resumed": ("reason",),
}


def short_type(ce_type: str) -> str:
    name = ce_type.removeprefix("org.manireports.offload.")
    return name.rsplit(".v", 1)[0] if ".v" in name else name


def history_item(row: dict[str, Any]) -> dict[str, Any]:
    kind = short_type(row["event_type"])
    detail = row["detail"] if isinstance(row["detail"], dict) else {}
    parts = []
    for name in _SUMMARY_FIELDS.get(kind, ()):
        value = detail.get(name)
        if value is None:
            continue
        if name == "problems" and isinstance(value, list):
            value = "; ".join(f"{p.get('field')}: {p.get('message')}" for p in value[:5] if isinstance(p, dict))
        parts.append(f"{name.replace('_', ' ')}: {value}")
    actor = str(detail.get("requested_by") or row["actor"] or "")
    if actor.isascii() and actor.isdigit():  # the audit log's actor of a job event is Moodle's createdby
        actor = f"Moodle user {actor}"
    return {"id": row["id"], "at": format_time(row["occurred_at"]), "type": kind, "actor": actor,
            "summary": "; ".join(parts)[:600]}


def safe_link(url: str | None) -> str | None:
    if not url:
        return None
    return url if urlsplit(url).scheme in ("http", "https") else None


def safe_next(target: str | None) -> str:
    """Only a path of our own UI: never another site, never a scheme-relative //host URL."""
    if not target or not target.startswith(PREFIX + "/") or target.startswith("//") or "\\" in target:
        return f"{PREFIX}/jobs"
    parts = urlsplit(target)
    return f"{PREFIX}/jobs" if parts.scheme or parts.netloc else target
