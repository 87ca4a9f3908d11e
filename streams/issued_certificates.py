"""Issued certificates read back: verify one code, or put a job's certificates in one ZIP file.

Used by the public ``/verify/{code}`` page and by ``offload certificates verify|zip``. Verification answers
for one code only: valid with that certificate's holder, course, date and job, or "unknown". The holder's
details are read back from the stored PDF itself (its document info, written by the renderer), after checking
the file still has the sha256 recorded when it was issued.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from config.settings import Settings

_TITLE_PREFIX = "Certificate — "
_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("f"): b"\f"}


@dataclass(frozen=True)
class Verification:
    code: str
    job_id: str
    issued_at: Any
    holder_name: str | None = None
    course_name: str | None = None
    completion_date: date | None = None
    problem: str | None = None  # set when the stored file is missing, unreadable or not the one issued


def _pdf_string(data: bytes, at: int) -> str | None:
    """The PDF string object starting at ``data[at]`` (literal ``(...)`` or hex ``<...>``), decoded."""
    if data[at:at + 1] == b"<":
        end = data.index(b">", at)
        raw = bytes.fromhex(data[at + 1:end].decode("ascii"))
    elif data[at:at + 1] == b"(":
        out, depth, i = bytearray(), 1, at + 1
        while i < len(data):
            c = data[i]
            if c == 0x5C:  # backslash
                i += 1
                nxt = data[i]
                if 0x30 <= nxt <= 0x37:
                    digits = re.match(rb"[0-7]{1,3}", data[i:i + 3])
                    assert digits is not None
                    out.append(int(digits.group(), 8) & 0xFF)
                    i += len(digits.group())
                    continue
                if nxt in (0x0A, 0x0D):  # line continuation
                    i += 1
                    continue
                out += _ESCAPES.get(nxt, bytes([nxt]))
            elif c == 0x28:
                depth += 1
                out.append(c)
            elif c == 0x29:
                depth -= 1
                if depth == 0:
                    break
                out.append(c)
            else:
                out.append(c)
            i += 1
        raw = bytes(out)
    else:
        return None
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be", "replace")
    from reportlab.pdfbase.rl_codecs import RL_Codecs  # type: ignore[import-untyped]

    RL_Codecs.register()  # PDFDocEncoding, which reportlab uses for text that fits it (e.g. the em dash)
    return raw.decode("pdfdoc", "replace")


def document_info(pdf: bytes) -> dict[str, str]:
    """Title, Subject, Keywords and CreationDate of a certificate PDF (the renderer writes them uncompressed)."""
    info: dict[str, str] = {}
    for name in ("Title", "Subject", "Keywords", "CreationDate"):
        m = re.search(rb"/" + name.encode() + rb"\s*([(<])", pdf)
        if m:
            value = _pdf_string(pdf, m.start(1))
            if value is not None:
                info[name] = value
    return info


def _holder(pdf: bytes) -> tuple[str | None, str | None, date | None]:
    info = document_info(pdf)
    title = info.get("Title", "")
    name = title[len(_TITLE_PREFIX):] if title.startswith(_TITLE_PREFIX) else None
    when = None
    m = re.match(r"D:(\d{4})(\d{2})(\d{2})", info.get("CreationDate", ""))
    if m:  # the renderer stamps the completion date (UTC midnight) as the creation date
        when = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return name, info.get("Subject"), when


def _rows(settings: Settings, where: str, params: tuple) -> list[dict[str, Any]]:
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row

    statement = sql.SQL(
        "SELECT r.job_id, r.userid, r.email, r.provider, r.certificate_code, r.certificate_sha256, r.timesent,"
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
    from streams.handlers.certificate_batches import CertificateStores

    code = normalise_code(text)
    if code is None:
        return None
    rows = await asyncio.to_thread(_rows, settings, "r.certificate_code = %s", (code,))
    if not rows:
        return None
    row = rows[0]
    stores = CertificateStores(settings)
    await stores.start()
    try:
        pdf = await _fetch(stores, row)
    except Exception as exc:  # noqa: BLE001 - still a valid code; say why the details cannot be shown
        return Verification(code, row["job_id"], row["timesent"], problem=f"certificate file unavailable: {exc}")
    finally:
        await stores.stop()
    name, course, when = _holder(pdf)
    return Verification(code, row["job_id"], row["timesent"], name, course, when)


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
