"""Reads the Postgres read models the projector keeps (jobs, job_recipients, company_cloud_settings).

The API never writes here: writes are events, and the projector turns them into rows. Tables that do not
exist yet (a projector that has not started) read as empty.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from config.settings import Settings

RECIPIENT_STATUSES = ("pending", "sent", "failed", "issued")
JOB_STATUSES = ("accepted", "running", "completed", "rejected")

_JOB_COLUMNS = """job_id, type, company_id, status, route, route_reason, provider, template_id, total_recipients,
    succeeded, failed, duplicates_removed, batch_count, batches_done, fell_back, fallback_reason, error_message,
    problems, createdby, timecreated, timestarted, timecompleted, updated_at"""


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
        )

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    async def _rows(self, query: str, params: tuple = ()) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            try:
                await cur.execute(query, params)
            except psycopg.errors.UndefinedTable:
                return []
            return await cur.fetchall()

    async def job(self, job_id: str) -> dict[str, Any] | None:
        rows = await self._rows(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = %s", (job_id,))
        return rows[0] if rows else None

    async def job_with_errors(self, job_id: str, limit: int = 10) -> tuple[dict[str, Any] | None, list[dict]]:
        """The job row and its most frequent failure messages, in one round trip of two statements."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            try:
                await cur.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = %s", (job_id,))
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
            f"""SELECT {_JOB_COLUMNS}, count(*) OVER () AS total_rows FROM jobs {clause}
                ORDER BY timecreated DESC NULLS LAST, job_id LIMIT %s OFFSET %s""",
            (*params, limit, offset),
        )
        total = rows[0].pop("total_rows") if rows else 0
        for row in rows[1:]:
            row.pop("total_rows")
        if not rows and offset:
            counted = await self._rows(f"SELECT count(*) AS n FROM jobs {clause}", tuple(params))
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


def progress(row: dict[str, Any], errors: list[dict[str, Any]], now: datetime | None = None) -> dict[str, Any]:
    """A job row as the API shows it: counters, percent done, rate over the time it has run, and why it went
    where it went."""
    total = row["total_recipients"] or 0
    sent, failed = row["succeeded"] or 0, row["failed"] or 0
    done = sent + failed
    started = row["timestarted"] or row["timecreated"]
    ended = row["timecompleted"] or now or datetime.now(UTC)
    elapsed = (ended - started).total_seconds() if started else 0.0
    return {
        "job_id": row["job_id"],
        "type": row["type"],
        "company_id": row["company_id"],
        "status": row["status"],
        "template_id": row["template_id"],
        "route": row["route"],
        "reason": row["route_reason"],
        "provider": row["provider"],
        "fell_back": row["fell_back"],
        "fallback_reason": row["fallback_reason"],
        "progress": {
            "total": total,
            "sent": sent,
            "failed": failed,
            "pending": max(total - done, 0),
            "percent": round(100.0 * done / total, 1) if total else (100.0 if row["status"] == "completed" else 0.0),
            "rate_per_second": round(done / elapsed, 1) if elapsed > 0 else 0.0,
            "batches": {"total": row["batch_count"], "done": row["batches_done"]},
            "duplicates_removed": row["duplicates_removed"],
        },
        # From the providers' webhooks, after sending: how many were delivered, bounced, marked as spam.
        "delivery": {
            "delivered": row.get("delivered", 0),
            "bounced": row.get("bounced", 0),
            "complained": row.get("complained", 0),
            "bounce_rate": round(row.get("bounced", 0) / sent, 4) if sent else 0.0,
        },
        "errors": [{"message": e["message"], "count": e["count"], "retryable": e["retryable"]} for e in errors],
        "rejection": {"message": row["error_message"], "problems": row["problems"]} if row["status"] == "rejected"
        else None,
        "createdby": row["createdby"],
        "created_at": _iso(row["timecreated"]),
        "started_at": _iso(row["timestarted"]),
        "completed_at": _iso(row["timecompleted"]),
        "updated_at": _iso(row["updated_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
