"""Reads the Postgres read models the projector keeps (jobs, job_recipients, company_cloud_settings, audit_log,
callbacks, projection_offsets): every query the API, the admin UI, /verify and /metrics make.

The API never writes here: writes are events, and the projector turns them into rows. Tables that do not
exist yet (a projector that has not started) read as empty.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from config.settings import Settings
from projections.jobs import SHOWN_STATUS, JobStatus
from schemas.events import JobPaused, JobResumed
from security.callback_urls import redacted

log = logging.getLogger(__name__)

RECIPIENT_STATUSES = ("pending", "sent", "failed", "issued", "suppressed")
SUPPRESSION_EVENT_TYPES = ("org.manireports.offload.recipient.unsubscribed.v1",
                           "org.manireports.offload.suppression.added.v1",
                           "org.manireports.offload.suppression.removed.v1")
JOB_STATUSES = tuple(JobStatus)

_JOB_COLUMNS = """job_id, type, company_id, status, route, route_reason, provider, template_id, total_recipients,
    succeeded, failed, duplicates_removed, batch_count, batches_done, fell_back, fallback_reason, error_message,
    problems, createdby, timecreated, timestarted, timecompleted, updated_at, delivered, bounced, complained,
    pacing, estimated_cost, currency, budget_wait, suppressed, template_source, template_version, callback_url"""


# The jobs as shown (projections.jobs.SHOWN_STATUS), except that an accepted or running job whose latest
# JobPaused / JobResumed (audit log; one topic and key, so offsets order them) is a pause shows as "paused".
# Derived here rather than stored: the projector then needs no order between the jobs and batches topics.
_SHOWN_STATUS = f"""CASE WHEN j.status IN ('accepted', 'running') AND (
        SELECT a.event_type FROM audit_log a WHERE a.subject = j.job_id
          AND a.event_type IN ('{JobPaused.ce_type}', '{JobResumed.ce_type}') ORDER BY a."offset" DESC LIMIT 1
    ) = '{JobPaused.ce_type}' THEN 'paused' ELSE {SHOWN_STATUS} END"""
_JOBS = ("(SELECT " + ", ".join(f"j.{c.strip()}" if c.strip() != "status" else f"{_SHOWN_STATUS} AS status"
                                 for c in _JOB_COLUMNS.split(",")) + " FROM jobs j)")


class ReadStore:
    def __init__(self, settings: Settings) -> None:
        schema = sql.Identifier(settings.projection_schema)

        async def configure(conn: psycopg.AsyncConnection) -> None:
            await conn.execute(sql.SQL("SET search_path TO {}").format(schema))

        self.pool = AsyncConnectionPool(
            settings.database_url,
            min_size=2,
            max_size=settings.api_db_pool_size,
            kwargs={"autocommit": True},
            configure=configure,
            open=False,
            # Postgres down: a request waits at most this long for a connection, then answers 503.
            timeout=settings.api_db_timeout,
            # A connection Postgres dropped (restart, outage) is noticed and replaced before it is handed out.
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=24 * 3600,  # keep trying in the background; never give the pool up
        )

    async def open(self) -> None:
        try:
            await self.pool.open(wait=True, timeout=30)
        except PoolTimeout:
            log.warning("Postgres unavailable at start-up: reads answer 503 until it is back")

    async def close(self) -> None:
        await self.pool.close()

    async def _rows(self, query: str, params: tuple | dict[str, Any] = ()) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            try:
                await cur.execute(query, params)
            except psycopg.errors.UndefinedTable:
                return []
            return await cur.fetchall()

    async def job(self, job_id: str) -> dict[str, Any] | None:
        rows = await self._rows(f"SELECT {_JOB_COLUMNS} FROM {_JOBS} jobs WHERE job_id = %s", (job_id,))
        return rows[0] if rows else None

    async def job_with_errors(self, job_id: str, limit: int = 10) -> tuple[dict[str, Any] | None, list[dict]]:
        """The job row and its most frequent failure messages, in one round trip of two statements."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            try:
                await cur.execute(f"SELECT {_JOB_COLUMNS} FROM {_JOBS} jobs WHERE job_id = %s", (job_id,))
                row = await cur.fetchone()
                if row is None or not row["failed"]:
                    return row, []
                await cur.execute(
                    """SELECT error_message AS message, count(*) AS count, bool_or(retryable) AS retryable
                       FROM job_recipients WHERE job_id = %s AND status = 'failed'
                       GROUP BY error_message ORDER BY count(*) DESC, error_message LIMIT %s""",
                    (job_id, limit),
                )
                return row, await cur.fetchall()
            except psycopg.errors.UndefinedTable:
                return None, []

    async def jobs(self, *, company_id: int | None, status: str | None, limit: int,
                   offset: int) -> tuple[list[dict[str, Any]], int]:
        where = []
        params: list[Any] = []
        if company_id is not None:
            where.append("company_id = %s")
            params.append(company_id)
        if status is not None:
            where.append("status = %s")
            params.append(status)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._rows(
            f"""SELECT {_JOB_COLUMNS}, count(*) OVER () AS total_rows FROM {_JOBS} jobs {clause}
                ORDER BY timecreated DESC NULLS LAST, job_id LIMIT %s OFFSET %s""",
            (*params, limit, offset),
        )
        total = rows[0].pop("total_rows") if rows else 0
        for row in rows[1:]:
            row.pop("total_rows")
        if not rows and offset:
            counted = await self._rows(f"SELECT count(*) AS n FROM {_JOBS} jobs {clause}", tuple(params))
            total = counted[0]["n"] if counted else 0
        return rows, total

    async def recipients(self, job_id: str, *, status: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        status_clause = "AND status = %s" if status else ""
        params: tuple = (job_id, status, limit, offset) if status else (job_id, limit, offset)
        return await self._rows(
            f"""SELECT userid, email, status, run, batch_no, attempts, retryable, error_message, provider,
                       certificate_url, certificate_code, timesent, updated_at
                FROM job_recipients WHERE job_id = %s {status_clause}
                ORDER BY userid LIMIT %s OFFSET %s""",
            params,
        )

    async def company_settings(self, company_id: int) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM company_cloud_settings WHERE company_id = %s", (company_id,))
        return rows[0] if rows else None

    # --- the admin UI ------------------------------------------------------------------------------

    async def job_list(self, *, company_id: int | None, status: str | None, job_type: str | None,
                       cancel_type: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """A page of jobs, newest first, each with whether a cancel was asked for; and how many match."""
        params = {"company": company_id, "status": status, "type": job_type, "cancel": cancel_type,
                  "limit": limit, "offset": offset}
        rows = await self._rows(
            f"""SELECT j.*, count(*) OVER () AS total_rows,
                      EXISTS (SELECT 1 FROM audit_log a WHERE a.subject = j.job_id AND a.event_type = %(cancel)s)
                        AS cancel_requested
               FROM {_JOBS} j
               WHERE (%(company)s::int IS NULL OR j.company_id = %(company)s)
                 AND (%(status)s::text IS NULL OR j.status = %(status)s)
                 AND (%(type)s::text IS NULL OR j.type = %(type)s)
               ORDER BY j.timecreated DESC NULLS LAST, j.job_id DESC
               LIMIT %(limit)s OFFSET %(offset)s""", params)
        total = rows[0]["total_rows"] if rows else 0
        if not rows and offset:
            counted = await self._rows(
                f"""SELECT count(*) AS n FROM {_JOBS} j WHERE (%(company)s::int IS NULL OR company_id = %(company)s)
                   AND (%(status)s::text IS NULL OR status = %(status)s)
                   AND (%(type)s::text IS NULL OR type = %(type)s)""", params)
            total = counted[0]["n"] if counted else 0
        return rows, total

    async def companies_with_jobs(self) -> list[int]:
        rows = await self._rows("SELECT DISTINCT company_id FROM jobs WHERE company_id IS NOT NULL ORDER BY 1")
        return [r["company_id"] for r in rows]

    async def was_requested(self, subject: str, event_type: str) -> bool:
        """Whether the audit log holds an event of this type about this subject (e.g. a job's cancel)."""
        rows = await self._rows("SELECT 1 FROM audit_log WHERE subject = %s AND event_type = %s LIMIT 1",
                                (subject, event_type))
        return bool(rows)

    async def latest_of(self, subject: str, event_types: tuple[str, ...]) -> dict[str, Any] | None:
        """The latest audit-log event of these types about this subject (one topic and key: offset orders them)."""
        rows = await self._rows(
            """SELECT event_type, occurred_at, detail FROM audit_log WHERE subject = %s AND event_type = ANY(%s)
               ORDER BY "offset" DESC LIMIT 1""", (subject, list(event_types)))
        return rows[0] if rows else None

    async def job_history(self, job_id: str, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        return await self._rows(
            """SELECT id, occurred_at, event_type, actor, detail FROM audit_log
               WHERE subject = %s AND id > %s ORDER BY occurred_at, id LIMIT %s""", (job_id, after, limit))

    async def companies_overview(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Every company with settings or jobs: its settings (if any) and how many jobs it has."""
        return await self._rows("""
            SELECT c.company_id, s.cloud_enabled, s.use_cloud_for_emails, s.use_cloud_for_certificates,
                   s.user_threshold, s.email_provider, s.storage_provider, s.changed_by, s.changed_at,
                   (SELECT count(*) FROM jobs j WHERE j.company_id = c.company_id) AS jobs
            FROM (SELECT company_id FROM company_cloud_settings UNION SELECT DISTINCT company_id FROM jobs
                  WHERE company_id IS NOT NULL) c
            LEFT JOIN company_cloud_settings s USING (company_id) ORDER BY c.company_id LIMIT %s""", (limit,))

    async def settings_history(self, company_id: int, event_type: str, limit: int = 200) -> list[dict[str, Any]]:
        return await self._rows(
            """SELECT id, occurred_at, actor, detail FROM audit_log WHERE event_type = %s AND subject = %s
               ORDER BY occurred_at DESC, id DESC LIMIT %s""", (event_type, str(company_id), limit))

    # --- suppression lists ------------------------------------------------------------------------

    async def suppressions(self, company_id: int, *, userid: int | None = None, limit: int = 50,
                           offset: int = 0) -> list[dict[str, Any]]:
        return await self._rows(
            """SELECT userid, scope, source, reason, email, job_id, changed_by, since FROM suppressions
               WHERE company_id = %s AND (%s::bigint IS NULL OR userid = %s)
               ORDER BY since DESC, userid, scope LIMIT %s OFFSET %s""",
            (company_id, userid, userid, limit, offset))

    async def suppression_history(self, company_id: int, limit: int = 50) -> list[dict[str, Any]]:
        """Every add and removal of the company's list, newest first, from the audit log."""
        return await self._rows(
            """SELECT occurred_at, event_type, subject, actor, detail FROM audit_log
               WHERE company_id = %s AND event_type = ANY(%s) ORDER BY occurred_at DESC, id DESC LIMIT %s""",
            (company_id, list(SUPPRESSION_EVENT_TYPES), limit))

    async def job_company(self, job_id: str) -> int | None:
        rows = await self._rows("SELECT company_id FROM jobs WHERE job_id = %s", (job_id,))
        return rows[0]["company_id"] if rows else None

    # --- /metrics ------------------------------------------------------------------------------------

    async def metrics(self, projection: str) -> dict[str, list[dict[str, Any]]]:
        """Everything /metrics reads from Postgres, on one connection: jobs by status and type, outcomes by
        route and provider, callbacks by status, and the projector's next offsets."""
        queries = {
            "jobs": (f"""SELECT status, coalesce(type, 'unknown') AS type, count(*) AS n FROM {_JOBS} jobs
                         GROUP BY 1, 2 ORDER BY 1, 2""", ()),
            "outcomes": ("""SELECT coalesce(route, 'unknown') AS route, coalesce(provider, 'unknown') AS provider,
                                   sum(succeeded)::bigint AS sent, sum(failed)::bigint AS failed
                            FROM jobs GROUP BY 1, 2 ORDER BY 1, 2""", ()),
            "callbacks": ("SELECT status, count(*) AS n FROM callbacks GROUP BY status ORDER BY status", ()),
            "projector": ("SELECT topic, partition, next_offset FROM projection_offsets WHERE projection = %s",
                          (projection,)),
        }
        found: dict[str, list[dict[str, Any]]] = {}
        async with self.pool.connection(timeout=5) as conn, conn.cursor(row_factory=dict_row) as cur:
            for name, (query, params) in queries.items():
                try:
                    await cur.execute(query, params)
                    found[name] = await cur.fetchall()
                except psycopg.errors.UndefinedTable:  # the projector has not created its tables yet
                    found[name] = []
        return found

    # --- public certificate verification ----------------------------------------------------------

    async def certificate(self, code: str) -> dict[str, Any] | None:
        """The issued certificate with this code: holder, course and date as recorded when it was issued."""
        rows = await self._rows(
            """SELECT job_id, userid, timesent, certificate_holder, certificate_course, certificate_completed
               FROM job_recipients WHERE certificate_code = %s AND status = 'issued'""", (code,))
        return rows[0] if rows else None


def progress(row: dict[str, Any], errors: list[dict[str, Any]], now: datetime | None = None) -> dict[str, Any]:
    """A job row as the API shows it: counters, percent done, rate over the time it has run, and why it went
    where it went."""
    total = row["total_recipients"] or 0
    sent, failed, suppressed = row["succeeded"] or 0, row["failed"] or 0, row["suppressed"] or 0
    done = sent + failed + suppressed
    started = row["timestarted"] or row["timecreated"]
    ended = row["timecompleted"] or now or datetime.now(UTC)
    elapsed = (ended - started).total_seconds() if started else 0.0
    return {
        "job_id": row["job_id"],
        "type": row["type"],
        "company_id": row["company_id"],
        "status": row["status"],
        "template_id": row["template_id"],
        # Where the message comes from (builtin, company, inline) and the company template version it renders.
        "template": {"source": row["template_source"], "version": row["template_version"]},
        "route": row["route"],
        "reason": row["route_reason"],
        "provider": row["provider"],
        "fell_back": row["fell_back"],
        "fallback_reason": row["fallback_reason"],
        "progress": {
            "total": total,
            "sent": sent,
            "failed": failed,
            "suppressed": suppressed,  # on the company's suppression list: not sent (not a failure)
            "pending": max(total - done, 0),
            "percent": round(100.0 * done / total, 1) if total
            else (100.0 if row["status"] == JobStatus.COMPLETED else 0.0),
            "rate_per_second": round(done / elapsed, 1) if elapsed > 0 else 0.0,
            "batches": {"total": row["batch_count"], "done": row["batches_done"]},
            "duplicates_removed": row["duplicates_removed"],
        },
        "pacing": row["pacing"],  # what paces the sends, e.g. "paced by SES max send rate 14/s"
        "estimated_cost": row["estimated_cost"],  # from the price table (OFFLOAD_PRICES), once completed
        "currency": row["currency"],
        # Set when the job waited (or waits: status "waiting") for its company's monthly budget: the figures.
        "budget_wait": row["budget_wait"],
        # From the providers' webhooks, after sending: how many were delivered, bounced, marked as spam.
        "delivery": {
            "delivered": row["delivered"],
            "bounced": row["bounced"],
            "complained": row["complained"],
            "bounce_rate": round(row["bounced"] / sent, 4) if sent else 0.0,
        },
        "errors": [{"message": e["message"], "count": e["count"], "retryable": e["retryable"]} for e in errors],
        "rejection": {"message": row["error_message"], "problems": row["problems"]}
        if row["status"] == JobStatus.REJECTED else None,
        # Where Moodle hears of progress, its query's values redacted (the read model keeps them out already; a
        # row projected before it did is redacted here).
        "callback_url": redacted(row["callback_url"]),
        "createdby": row["createdby"],
        "created_at": _iso(row["timecreated"]),
        "started_at": _iso(row["timestarted"]),
        "completed_at": _iso(row["timecompleted"]),
        "updated_at": _iso(row["updated_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
