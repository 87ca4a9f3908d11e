"""Renders docs/sample-certificate.png: the built-in ``course_completion`` template for a realistic learner.

Run ``python docs/make_sample_certificate.py`` after changing the template or renderer, and look at the PNG.
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from content.certificates.codes import certificate_code, verification_url  # noqa: E402
from content.certificates.render import CertificateRenderer  # noqa: E402
from content.certificates.templates import CertificateTemplateStore  # noqa: E402


def main(out: Path = ROOT / "docs" / "sample-certificate.png", dpi: int = 100) -> None:
    import pypdfium2

    template = CertificateTemplateStore().get("course_completion")
    code = certificate_code(b"sample-secret-for-the-docs-only!", "job-2026-11-0042", 12345, template.id)
    pdf = CertificateRenderer().render(
        template,
        learner_name="Amélie Dubois-Laurent",
        course_name="Occupational Health and Safety Management",
        completion_date=date(2026, 11, 20),
        certificate_code=code,
        verification_url=verification_url("https://moodle.example.org/offload/verify", code),
        template_data={
            "custom_text": "Awarded 12 CPD hours with distinction",
            "signer_name": "Dr. Helena Marsh",
            "signer_title": "Director of Learning",
            "organisation": "Northwind Training Academy",
        },
    )
    doc = pypdfium2.PdfDocument(pdf)
    try:
        doc[0].render(scale=dpi / 72).to_pil().save(out, optimize=True)
    finally:
        doc.close()
    print(f"{out} ({len(pdf) / 1024:.1f} KB PDF)")


if __name__ == "__main__":
    main()
