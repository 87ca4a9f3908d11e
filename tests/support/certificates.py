"""Helpers for certificate tests: a renderer and its inputs, PDF text extraction, QR decoding from pixels."""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from io import BytesIO
from typing import Any

from content.certificates.codes import certificate_code, verification_url
from content.certificates.render import CertificateRenderer
from content.certificates.templates import CertificateTemplate, CertificateTemplateStore

SECRET = b"test-secret-for-certificate-codes"
VERIFY_BASE = "https://moodle.example.org/offload/verify"


@lru_cache(maxsize=1)
def renderer() -> CertificateRenderer:
    return CertificateRenderer()


def builtin_template() -> CertificateTemplate:
    return CertificateTemplateStore().get("course_completion")


def render_inputs(learner_name: str = "Amélie Dubois-Laurent", userid: int = 12345, **overrides: Any) -> dict:
    """Keyword arguments for ``CertificateRenderer.render`` with a real code and verification URL."""
    code = certificate_code(SECRET, "job-abc", userid, "course_completion")
    inputs: dict[str, Any] = {
        "learner_name": learner_name,
        "course_name": "Occupational Health and Safety Management",
        "completion_date": date(2026, 11, 20),
        "certificate_code": code,
        "verification_url": verification_url(VERIFY_BASE, code),
        "template_data": {"custom_text": "Awarded 12 CPD hours", "signer_name": "Dr. Helena Marsh"},
    }
    inputs.update(overrides)
    return inputs


def pdf_text(pdf: bytes) -> str:
    from pypdf import PdfReader

    reader = PdfReader(BytesIO(pdf))
    assert len(reader.pages) == 1
    return reader.pages[0].extract_text()


def rasterise(pdf: bytes, dpi: int = 150):  # -> PIL.Image.Image
    import pypdfium2

    doc = pypdfium2.PdfDocument(pdf)
    try:
        return doc[0].render(scale=dpi / 72).to_pil()
    finally:
        doc.close()


def decode_qr(pdf: bytes) -> list[str]:
    """Texts of every QR code zxing-cpp finds on the rasterised first page."""
    import zxingcpp

    found = zxingcpp.read_barcodes(rasterise(pdf))
    return [b.text for b in found if b.format == zxingcpp.BarcodeFormat.QRCode]
