"""Issued certificates read back: verify one code, or put a job's certificates in one ZIP file.

Used by ``offload certificates verify|zip`` (the public ``/verify/{code}`` page reads the same columns through
the API's read store). Verification answers for one code only: valid with that certificate's holder, course,
date and job, or "unknown", from the read model (what CertificateIssued recorded), never from the PDF. The ZIP
checks every stored PDF against the sha256 recorded when it was issued.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import sys
import zipfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from config.settings import Settings


@dataclass(frozen=True)
class Verification:
    code: str
    job_id: str
    issued_at: Any
    holder_name: str | None = None
    course_name: str | None = None
    completion_date: date | None = None
    problem: str | None = None  # set when the read model has no details (issued before they were recorded)


def _rows(settings: Settings, where: str, params: tuple) -> list[dict[str, Any]]:
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row

    statement = sql.SQL(
        "SELECT r.job_id, r.userid, r.email, r.provider, r.certificate_code, r.certificate_sha256, r.timesent,"
        " r.certificate_holder, r.certificate_course, r.certificate_completed,"
        " j.company_id FROM {}.job_recipients r LEFT JOIN {}.jobs j ON j.job_id = r.job_id"
        " WHERE r.status = 'issued' AND " + where + " ORDER BY r.userid"
    ).format(sql.Identifier(settings.projection_schema), sql.Identifier(settings.projection_schema))
    with psycopg.connect(settings.database_url) as conn, conn.cursor(row_factory=dict_row) as cur:
        try:
            cur.execute(statement, params)
        except psycopg.errors.UndefinedTable:
            return []
        return cur.fetchall()


async def _fetch(stores: Any, row: dict[str, Any]) -> bytes:
    """The stored PDF of one issued row, checked against the sha256 recorded at issue."""
    from adapters.storage.base import object_key

    key = object_key(row["company_id"], row["job_id"], row["userid"], row["certificate_code"])
    pdf = await stores.by_backend(row["provider"]).get(key)
    if hashlib.sha256(pdf).hexdigest() != row["certificate_sha256"]:
        raise ValueError(f"stored object {key} does not match the sha256 recorded at issue")
    return pdf


async def verify_certificate(settings: Settings, text: str) -> Verification | None:
    """The certificate with this code, or None when no certificate has it (or it is not a code at all)."""
    from content.certificates.codes import normalise_code

    code = normalise_code(text)
    if code is None:
        return None
    rows = await asyncio.to_thread(_rows, settings, "r.certificate_code = %s", (code,))
    if not rows:
        return None
    row = rows[0]
    problem = None if row["certificate_holder"] else "issued before holder details were recorded"
    return Verification(code, row["job_id"], row["timesent"], row["certificate_holder"], row["certificate_course"],
                        row["certificate_completed"], problem)


async def zip_certificates(settings: Settings, job_id: str, out: Path, *, concurrency: int = 8) -> dict[str, int]:
    """Every issued certificate of ``job_id`` into one ZIP (plus manifest.csv), written entry by entry.

    At most ``concurrency`` PDFs are held in memory at once; the ZIP appears at ``out`` only when complete.
    """
    from streams.handlers.certificate_batches import CertificateStores

    rows = await asyncio.to_thread(_rows, settings, "r.job_id = %s", (job_id,))
    if not rows:  # no file at all rather than an empty archive that looks like a download
        return {"written": 0, "missing": 0}
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    stores = CertificateStores(settings)
    await stores.start()
    written = missing = 0
    manifest = io.StringIO()
    table = csv.writer(manifest)
    table.writerow(["userid", "email", "certificate_code", "sha256", "file"])
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:  # PDFs are compressed
            for start in range(0, len(rows), concurrency):
                chunk = rows[start:start + concurrency]
                pdfs = await asyncio.gather(*(_fetch(stores, r) for r in chunk), return_exceptions=True)
                for row, pdf in zip(chunk, pdfs, strict=True):
                    name = f"{row['userid']}-{row['certificate_code']}.pdf"
                    if isinstance(pdf, BaseException):
                        print(f"missing {name}: {pdf}", file=sys.stderr)
                        missing += 1
                        continue
                    archive.writestr(name, pdf)
                    table.writerow([row["userid"], row["email"], row["certificate_code"],
                                    row["certificate_sha256"], name])
                    written += 1
            archive.writestr("manifest.csv", manifest.getvalue())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        await stores.stop()
    return {"written": written, "missing": missing}
