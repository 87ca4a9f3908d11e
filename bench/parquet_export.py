"""The benchmark job's log as Parquet: how long ``offload export --format parquet`` takes, how large the files
are, and that DuckDB reads them with the contract's types and the read model's counts.

Used by ``python -m bench.email_job --export-parquet DIR`` right after the local job (the figures go into its
JSON line under ``parquet_export``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.measure import log
from config.settings import Settings
from offload.export_parquet import export_parquet
from offload.logtools import EventFilter

# Columns whose DuckDB type shows that the contract's types came through (ids integers, times timestamps).
TYPED = {"userid": "BIGINT", "batch_no": "BIGINT", "attempts": "BIGINT", "company_id": "BIGINT",
         "sent_at": "TIMESTAMP WITH TIME ZONE", "ce_time": "TIMESTAMP WITH TIME ZONE", "job_id": "VARCHAR"}


def read_model_counts(settings: Settings, job_id: str) -> dict[str, int]:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.projection_schema)))
        rows = conn.execute("SELECT status, count(*) FROM job_recipients WHERE job_id = %s GROUP BY 1",
                            (job_id,)).fetchall()
    return {status: n for status, n in rows}


def measure_export(settings: Settings, job_id: str, out_dir: Path) -> dict[str, Any]:
    import duckdb  # the analytics extra

    started = time.monotonic()
    counts = asyncio.run(export_parquet(settings, EventFilter(job_id=job_id), out_dir))
    seconds = time.monotonic() - started
    rows = sum(counts.values())
    size = sum(p.stat().st_size for p in out_dir.rglob("*.parquet"))
    db = duckdb.connect()
    sent_file = out_dir / "recipient.sent.v1.parquet"
    types = {name: kind for name, kind, *_ in db.sql(f"DESCRIBE SELECT * FROM '{sent_file}'").fetchall()}
    in_parquet = {"sent": db.sql(f"SELECT count(DISTINCT userid) FROM '{sent_file}'").fetchone()[0]}
    failed_file = out_dir / "recipient.failed.v1.parquet"
    if failed_file.exists():
        in_parquet["failed"] = db.sql(f"SELECT count(DISTINCT userid) FROM '{failed_file}'").fetchone()[0]
    expected = read_model_counts(settings, job_id)
    result = {
        "seconds": round(seconds, 2),
        "events": rows,
        "events_per_s": round(rows / seconds),
        "bytes": size,
        "bytes_per_event": round(size / rows, 1),
        "files": {name: n for name, n in sorted(counts.items())},
        "duckdb_types": {name: types[name] for name in TYPED},
        "types_as_contract": all(types[name] == kind for name, kind in TYPED.items()),
        "learners_in_parquet": in_parquet,
        "learners_in_read_model": expected,
        "equals_read_model": in_parquet == {k: v for k, v in expected.items() if k in ("sent", "failed")},
    }
    log(f"parquet export of {job_id}: {rows} events in {seconds:.2f} s, {size / 1e6:.1f} MB; "
        f"types as contract {result['types_as_contract']}, equals read model {result['equals_read_model']}")
    return result


def parquet_figures(settings: Settings, job_id: str, out_dir: Path | None) -> dict[str, Any]:
    """``{"parquet_export": figures}`` when ``out_dir`` is given, else nothing."""
    return {"parquet_export": measure_export(settings, job_id, out_dir)} if out_dir else {}
