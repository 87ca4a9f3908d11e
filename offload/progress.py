"""Live progress of a job, read from the Postgres projection, drawn as one updating terminal line."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from config.settings import Settings
from projections.jobs import SHOWN_STATUS, WAITING_FOR, JobStatus

_QUERY = f"""SELECT job_id, {SHOWN_STATUS} AS status, route, route_reason, provider, total_recipients, succeeded,
                    failed, suppressed, batch_count, batches_done, fell_back, error_message, timecreated,
                    timecompleted, pacing
             FROM jobs j WHERE job_id = %s"""


async def _connect(settings: Settings) -> psycopg.AsyncConnection:
    """A read-only session on the read models' schema."""
    conn = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
    await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.projection_schema)))
    return conn


async def job_row(conn: psycopg.AsyncConnection, job_id: str) -> dict | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_QUERY, (job_id,))
        return await cur.fetchone()


def bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else 0
    return "#" * filled + "-" * (width - filled)


async def watch(settings: Settings, job_id: str, *, timeout: float = 3600, out=sys.stdout) -> int:
    """Print progress until the job completes, is cancelled or is rejected; 0 when completed, 1 otherwise."""
    conn = await _connect(settings)
    started = time.monotonic()
    routed = False
    shown = 0  # characters of a wait at the end of the line drawn last
    try:
        while time.monotonic() - started < timeout:
            try:
                row = await job_row(conn, job_id)
            except psycopg.errors.UndefinedTable:
                row = None  # the projector has not created its tables yet
            if row is None:
                out.write(f"\r{job_id}: waiting for the worker to accept it ...")
                out.flush()
                await asyncio.sleep(0.5)
                continue
            if row["status"] == JobStatus.REJECTED:
                out.write(f"\n{job_id}: REJECTED: {row['error_message']}\n")
                return 1
            if row["status"] == JobStatus.WAITING:
                out.write(f"\r{job_id}: waiting for the monthly budget ({row['route_reason']})")
                out.flush()
                await asyncio.sleep(0.5)
                continue
            if not routed and row["route"]:
                out.write(f"\n{job_id}: {row['route']} via {row['provider']} ({row['route_reason']})\n")
                routed = True
            done = row["succeeded"] + row["failed"] + row["suppressed"]  # suppressed: on the suppression list
            total = row["total_recipients"]
            elapsed = (datetime.now(UTC) - row["timecreated"]).total_seconds() if row["timecreated"] else 0
            rate = done / elapsed if elapsed > 0 else 0
            # A wait (the relay unreachable, the disk full) said at the line's end while it lasts, blanked after.
            waits = row["pacing"][:100] if (row["pacing"] or "").startswith(WAITING_FOR) else ""
            out.write(f"\r[{bar(done, total)}] {done}/{total} sent {row['succeeded']} failed {row['failed']} "
                      f"pending {total - done}  {rate:,.0f}/s  {waits}{' ' * (shown - len(waits))}")
            shown = len(waits)
            out.flush()
            if row["status"] == JobStatus.COMPLETED:
                elapsed = (row["timecompleted"] - row["timecreated"]).total_seconds()
                held = f", {row['suppressed']} suppressed" if row["suppressed"] else ""
                out.write(f"\n{job_id}: completed in {elapsed:.1f} s: {row['succeeded']} sent, "
                          f"{row['failed']} failed{held}{' (fell back to local)' if row['fell_back'] else ''}\n")
                return 0
            if row["status"] == JobStatus.CANCELLED:
                out.write(f"\n{job_id}: cancelled: {row['succeeded']} sent, {row['failed']} failed\n")
                return 1
            await asyncio.sleep(0.5)
        out.write(f"\n{job_id}: not completed within {timeout:.0f} s\n")
        return 1
    finally:
        await conn.close()


async def list_jobs(settings: Settings, *, company_id: int | None, status: str | None, limit: int) -> list[str]:
    """One line per job, newest first, from the jobs read model."""
    conn = await _connect(settings)
    try:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"""SELECT * FROM (SELECT job_id, type, company_id, {SHOWN_STATUS} AS status, route, provider,
                                         total_recipients, succeeded, failed, suppressed, timecreated,
                                         estimated_cost, currency FROM jobs j) jobs
                   WHERE (%(company)s::int IS NULL OR company_id = %(company)s)
                     AND (%(status)s::text IS NULL OR status = %(status)s)
                   ORDER BY timecreated DESC NULLS LAST LIMIT %(limit)s""",
                {"company": company_id, "status": status, "limit": limit},
            )
            rows = await cur.fetchall()
    finally:
        await conn.close()
    lines = [f"{'job':24} {'type':11} {'co':>4} {'status':10} {'route':6} {'provider':8} "
             f"{'done/total':>13} {'failed':>6} {'cost':>12}  created"]
    for r in rows:
        done = r["succeeded"] + r["failed"] + r["suppressed"]
        created = f"{r['timecreated']:%Y-%m-%d %H:%M}" if r["timecreated"] else "-"
        cost = f"{r['estimated_cost']:.4f} {r['currency']}" if r["estimated_cost"] is not None else "-"
        lines.append(f"{r['job_id'][:24]:24} {r['type'] or '-':11} {r['company_id'] or 0:>4} {r['status']:10} "
                     f"{r['route'] or '-':6} {r['provider'] or '-':8} {done:>6}/{r['total_recipients']:<6} "
                     f"{r['failed']:>6} {cost:>12}  {created}")
    return lines
