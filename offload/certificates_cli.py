"""``offload certificates verify CODE`` and ``offload certificates zip JOB_ID OUT.zip``.

Verification answers for one code only: valid with that certificate's holder, course, date and job, or
"unknown", from the read model (what CertificateIssued recorded). The ZIP checks every stored PDF against the
sha256 recorded when it was issued.
"""

from __future__ import annotations

import argparse
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

from offload.config import Settings


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
    """The certificate with this code, or None when no certificate has it (or it is not a code at all).

    Answers from the read model: holder, course and date as recorded in CertificateIssued, never from the PDF.
    """
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
    from streams.certificate_batches import CertificateStores

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


def cmd_verify(args: argparse.Namespace) -> int:
    found = asyncio.run(verify_certificate(Settings(), args.code))
    if found is None:
        print("unknown: no certificate has this code")
        return 1
    print(f"valid: certificate {found.code}")
    if found.problem:
        print(f"  {found.problem}")
    else:
        print(f"  holder: {found.holder_name}")
        print(f"  course: {found.course_name}")
        print(f"  completed: {found.completion_date.isoformat() if found.completion_date else '?'}")
    print(f"  job: {found.job_id}")
    return 0


def cmd_zip(args: argparse.Namespace) -> int:
    counts = asyncio.run(zip_certificates(Settings(), args.job_id, Path(args.out)))
    if not counts["written"] and not counts["missing"]:
        print(f"no issued certificates for job {args.job_id}")
        return 1
    print(f"wrote {counts['written']} certificates to {args.out}" +
          (f" ({counts['missing']} missing)" if counts["missing"] else ""))
    return 1 if counts["missing"] or not counts["written"] else 0


def add_commands(subparsers: Any) -> None:
    """Adds ``certificates verify`` and ``certificates zip`` to the ``offload`` command."""
    p = subparsers.add_parser("certificates", help="verify a certificate code; download a job's certificates")
    sub = p.add_subparsers(dest="certificates_command", required=True)
    v = sub.add_parser("verify", help="valid (with holder, course, date, job) or unknown for one code")
    v.add_argument("code")
    v.set_defaults(func=cmd_verify)
    z = sub.add_parser("zip", help="every issued certificate of a job in one ZIP file")
    z.add_argument("job_id")
    z.add_argument("out")
    z.set_defaults(func=cmd_zip)
