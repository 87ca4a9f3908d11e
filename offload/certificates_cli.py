"""``offload certificates verify CODE`` and ``offload certificates zip JOB_ID OUT.zip``."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from config.load import settings_or_exit
from streams.issued_certificates import verify_certificate, zip_certificates


def cmd_verify(args: argparse.Namespace) -> int:
    found = asyncio.run(verify_certificate(settings_or_exit(), args.code))
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
    counts = asyncio.run(zip_certificates(settings_or_exit(), args.job_id, Path(args.out)))
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
