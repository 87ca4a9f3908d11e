"""Raw render rate of the built-in certificate: one process per core, each rendering distinct learners.

Run ``python -m bench.certificate_render [n_per_proc]``; the job benchmark imports :func:`raw_render_rate`
to tell how much of its end-to-end rate the PDF rendering alone would allow.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

if not __package__:  # run as a script: make the repository importable (children re-run this too)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAMES = ["Amélie Dubois-Laurent", "Анна Кузнецова", "Νικόλαος Παπαδόπουλος", "John Smith", "王小明",
         "Maximiliana Theodora Alexandrescu-Wolfenstein", "Siobhán Ní Bhriain", "Łukasz Żółkiewski"]


def _render_many(n: int) -> tuple[int, float, list[int]]:
    """Render ``n`` certificates in this process; returns (count, seconds, sizes), fonts warmed up first."""
    from content.certificates.codes import certificate_code, verification_url
    from content.certificates.render import CertificateRenderer
    from content.certificates.templates import CertificateTemplateStore

    template = CertificateTemplateStore().get("course_completion")
    renderer = CertificateRenderer()
    secret = b"benchmark-secret-not-for-production"
    pid = os.getpid()

    def one(i: int) -> bytes:
        code = certificate_code(secret, f"bench-{pid}", i, template.id)
        return renderer.render(
            template,
            learner_name=f"{NAMES[i % len(NAMES)]} {i}",
            course_name="Occupational Health and Safety Management",
            completion_date=date(2026, 11, 20),
            certificate_code=code,
            verification_url=verification_url("https://moodle.example.org/offload/verify", code),
            template_data={"custom_text": "Awarded 12 CPD hours", "signer_name": "Dr. Helena Marsh"},
        )

    for i in range(len(NAMES)):  # registers every font the names need before the clock starts
        one(-1 - i)
    sizes = []
    started = time.perf_counter()
    for i in range(n):
        sizes.append(len(one(i)))
    return n, time.perf_counter() - started, sizes


def raw_render_rate(n_per_proc: int = 300, procs: int | None = None) -> dict:
    """Certificates/s per core and in total, ``procs`` (default: one per core) processes rendering at once."""
    procs = procs or os.cpu_count() or 1
    with mp.get_context("spawn").Pool(procs) as pool:
        results = pool.map(_render_many, [n_per_proc] * procs)
    per_proc = [count / seconds for count, seconds, _ in results]
    sizes = [s for _, _, proc_sizes in results for s in proc_sizes]
    return {
        "processes": procs,
        "certificates": sum(c for c, _, _ in results),
        "per_core_per_s": round(statistics.median(per_proc), 1),
        "total_per_s": round(sum(per_proc), 1),
        "median_pdf_bytes": int(statistics.median(sizes)),
        "max_pdf_bytes": max(sizes),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_per_proc", type=int, nargs="?", default=300, help="certificates each process renders")
    n = parser.parse_args(argv).n_per_proc
    result = raw_render_rate(n)
    print(f"processes:            {result['processes']}")
    print(f"certificates/s/core:  {result['per_core_per_s']}")
    print(f"certificates/s total: {result['total_per_s']}")
    median_kb, max_kb = result["median_pdf_bytes"] / 1024, result["max_pdf_bytes"] / 1024
    print(f"median PDF size:      {median_kb:.1f} KB (max {max_kb:.1f} KB)")


if __name__ == "__main__":
    main()
