"""Renders a certificate template to a one-page PDF with reportlab: embedded TrueType subsets, fast QR code.

Which fonts draw which scripts is decided in :mod:`content.certificates.fonts`.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import threading
import time
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from io import BytesIO
from pathlib import Path

import segno
from reportlab import rl_config
from reportlab.lib.colors import HexColor
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader, TimeStamp
from reportlab.pdfbase import pdfdoc, pdfmetrics
from reportlab.pdfgen.canvas import Canvas

from content.certificates.fonts import FontFace, FontSet, LoadedFont, font_runs
from content.certificates.templates import DEFAULT_TEXT, CertificateTemplate, TemplateField

# A fixed QR mask: any of the 8 decodes, and segno's search for the "best" one took 45% of a render.
QR_MASK = 0
# reportlab keeps per-document font state on shared TTFont objects; one render at a time per process.
_RENDER_LOCK = threading.Lock()


def clean_text(text: str) -> str:
    """NFC-normalised single line: combining accents join their letters, control characters go."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)
    return re.sub(r"\s+", " ", text).strip()


def _width(runs: list[tuple[LoadedFont, str]], size: float, spacing: float) -> float:
    chars = sum(len(t) for _, t in runs)
    return sum(pdfmetrics.stringWidth(t, f.name, size) for f, t in runs) + spacing * max(chars - 1, 0)


@dataclass(frozen=True, slots=True)
class Line:
    """A laid-out line of text: the runs, the chosen size and whether it was cut."""

    runs: list[tuple[LoadedFont, str]]
    size: float
    width: float
    truncated: bool

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.runs)


def fit_line(text: str, chain: Sequence[FontFace], box_width: float, start: float, smallest: float,
             spacing: float = 0.0) -> Line:
    """Largest size in [smallest, start] at which ``text`` fits ``box_width`` (points); else cut with '…'."""
    runs = font_runs(text, chain)
    at_one = _width(runs, 1.0, 0.0)
    gaps = spacing * max(len(text) - 1, 0)
    size = start if at_one == 0 else min(start, (box_width - gaps) / at_one)
    size = int(size * 10) / 10  # 0.1 pt steps keep the output stable across float noise
    if size >= smallest:
        return Line(runs, size, _width(runs, size, spacing), False)
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix that fits with the ellipsis, by bisection
        mid = (lo + hi + 1) // 2
        if _width(font_runs(text[:mid].rstrip() + "…", chain), smallest, spacing) <= box_width:
            lo = mid
        else:
            hi = mid - 1
    runs = font_runs(text[:lo].rstrip() + "…", chain)
    return Line(runs, smallest, _width(runs, smallest, spacing), True)


def _fill(text: str, values: Mapping[str, str]) -> str:
    return re.sub(r"\{([a-z_]+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def _format_date(value: date, fmt: str) -> str:
    return value.strftime(fmt.replace("%-d", str(value.day)))


def draw_qr(canvas: Canvas, data: str, x: float, y: float, size: float) -> None:
    """Draw ``data`` as a QR code in the square at (x, y): segno's modules as ONE path of row runs.

    The path is written as raw operators in module units under one transform, because reportlab formats
    every coordinate of ``path.rect`` in pure Python (that alone costs more than the rest of the page).
    """
    qr = segno.make(data, error="m", micro=False, boost_error=False, mask=QR_MASK)
    quiet = 2  # modules of white margin inside the square; the light page around it adds the rest
    count = len(qr.matrix)
    module = size / (count + 2 * quiet)
    ops = []
    for r, row in enumerate(qr.matrix):
        c = 0
        while c < count:
            if row[c] & 1:
                start = c
                while c < count and row[c] & 1:
                    c += 1
                ops.append(f"{start} {count - 1 - r} {c - start} 1 re")
            else:
                c += 1
    canvas.saveState()
    canvas.setFillColor(HexColor("#ffffff"))
    canvas.rect(x, y, size, size, stroke=0, fill=1)
    canvas.transform(module, 0, 0, module, x + quiet * module, y + quiet * module)
    canvas.addLiteral("0 g\n" + "\n".join(ops) + "\nf")
    canvas.restoreState()


@contextmanager
def _binary_streams() -> Iterator[None]:
    # ASCII85 wrapping makes the file 25% bigger and costs ~15% of a render; a PDF is binary anyway.
    # reportlab only has a process-wide switch, so it is set for the render (under _RENDER_LOCK) only.
    saved, rl_config.useA85 = rl_config.useA85, 0
    try:
        yield
    finally:
        rl_config.useA85 = saved


class CertificateRenderer:
    """Turns a template plus one learner's data into PDF bytes; identical inputs give identical bytes.

    Rendering is CPU-bound and serialised per process (reportlab's shared font state), so scale with processes
    (one worker per core), not threads. Fonts are parsed once per process and shared by every renderer.
    """

    def __init__(self, fonts: FontSet | None = None) -> None:
        self.fonts = fonts or FontSet.default()
        self._images: dict[Path, ImageReader] = {}

    def render(self, template: CertificateTemplate, *, learner_name: str, course_name: str,
               completion_date: date, certificate_code: str, verification_url: str,
               template_data: Mapping[str, str]) -> bytes:
        """One-page PDF of ``template`` for one learner."""
        values = {
            "learner_name": clean_text(learner_name),
            "course_name": clean_text(course_name),
            "certificate_code": certificate_code,
            "verification_url": verification_url,
        }
        data = {str(k): clean_text(str(v)) for k, v in template_data.items()}
        page_w, page_h = (v * mm for v in template.page_mm)
        buf = BytesIO()
        with _RENDER_LOCK, _binary_streams():
            canvas = Canvas(buf, pagesize=(page_w, page_h), invariant=1, pageCompression=1)
            self._fix_identity(canvas, template, values, completion_date, data)
            canvas.setTitle(f"Certificate — {values['learner_name']}")
            canvas.setSubject(values["course_name"])
            canvas.setCreator("ManiReports Offload")
            canvas.setKeywords(certificate_code)
            self._draw_page(canvas, template, page_w, page_h)
            for fld in template.fields:
                self._draw_field(canvas, template, fld, page_h, values, data, completion_date)
            canvas.showPage()
            canvas.save()
        return buf.getvalue()

    @staticmethod
    def _fix_identity(canvas: Canvas, template: CertificateTemplate, values: Mapping[str, str],
                      completion: date, data: Mapping[str, str]) -> None:
        # Creation date = completion date (UTC midnight), /ID = hash of the inputs: no clock, no randomness.
        doc = canvas._doc  # noqa: SLF001 - reportlab has no public hook for either
        stamp = TimeStamp(1)
        stamp.t = calendar.timegm(completion.timetuple())
        stamp.lt = time.gmtime(stamp.t)
        stamp.YMDhms = tuple(stamp.lt)[:6]
        doc._timeStamp = stamp  # noqa: SLF001
        ident = json.dumps([template.id, template.version, dict(values), completion.isoformat(), dict(data)],
                           sort_keys=True, ensure_ascii=False).encode()
        digest = pdfdoc.PDFText(hashlib.sha256(ident).digest()[:16], enc="raw").format(pdfdoc.DummyDoc())
        doc._ID = b"\n[" + digest + digest + b"]\n"  # noqa: SLF001

    def _draw_page(self, canvas: Canvas, template: CertificateTemplate, page_w: float, page_h: float) -> None:
        if template.background_colour:
            canvas.setFillColor(HexColor(template.background_colour))
            canvas.rect(0, 0, page_w, page_h, stroke=0, fill=1)
        if template.background_image:
            canvas.drawImage(self.image(template.asset(template.background_image)), 0, 0, page_w, page_h)
        if template.border == "none":
            return
        outer, inner = 10 * mm, 13.5 * mm
        canvas.setStrokeColor(HexColor(template.border_colour))
        canvas.setLineWidth(2.2)
        canvas.rect(outer, outer, page_w - 2 * outer, page_h - 2 * outer, stroke=1, fill=0)
        if template.border == "single":
            return
        canvas.setStrokeColor(HexColor(template.border_accent_colour))
        canvas.setLineWidth(0.8)
        canvas.rect(inner, inner, page_w - 2 * inner, page_h - 2 * inner, stroke=1, fill=0)
        if template.border == "double_ornate":
            canvas.setFillColor(HexColor(template.border_accent_colour))
            d = 2.2 * mm  # a small diamond on each inner corner
            for cx in (inner, page_w - inner):
                for cy in (inner, page_h - inner):
                    canvas.saveState()
                    canvas.translate(cx, cy)
                    canvas.rotate(45)
                    canvas.rect(-d / 1.414, -d / 1.414, d * 1.414, d * 1.414, stroke=0, fill=1)
                    canvas.restoreState()

    def image(self, path: Path) -> ImageReader:
        """An image read once per renderer (signature, background)."""
        reader = self._images.get(path)
        if reader is None:
            reader = self._images[path] = ImageReader(str(path))
        return reader

    def _draw_field(self, canvas: Canvas, template: CertificateTemplate, fld: TemplateField, page_h: float,
                    values: Mapping[str, str], data: Mapping[str, str], completion: date) -> None:
        x, w, h = fld.x * mm, fld.width * mm, fld.height * mm
        y = page_h - (fld.y + fld.height) * mm  # reportlab's origin is bottom-left
        rule = HexColor(fld.rule_colour or fld.colour)
        for wanted, ry in ((fld.rule_above, y + h), (fld.rule_below, y)):
            if wanted:
                canvas.setStrokeColor(rule)
                canvas.setLineWidth(0.6)
                canvas.line(x, ry, x + w, ry)
        if fld.kind == "qr_code":
            side = min(w, h)
            draw_qr(canvas, values["verification_url"], x + (w - side) / 2, y + (h - side) / 2, side)
            return
        if fld.kind == "signature_image":
            assert fld.image is not None
            canvas.drawImage(self.image(template.asset(fld.image)), x, y, w, h,
                             preserveAspectRatio=True, anchor="c", mask="auto")
            return
        text = self._field_text(fld, values, data, completion)
        if not text:
            return
        line = fit_line(text, self.fonts.chain(fld.font, fld.style), w, min(fld.start_size, h / 1.15),
                        min(fld.smallest_size, h / 1.15), fld.letter_spacing)
        lead = line.runs[0][0]
        baseline = y + (h - (lead.ascent + lead.descent) * line.size) / 2 + lead.descent * line.size
        cx = {"left": x, "center": x + (w - line.width) / 2, "right": x + w - line.width}[fld.align]
        canvas.setFillColor(HexColor(fld.colour))
        for font, run in line.runs:
            canvas.setFont(font.name, line.size)
            canvas.drawString(cx, baseline, run, charSpace=fld.letter_spacing)
            cx += _width([(font, run)], line.size, fld.letter_spacing) + fld.letter_spacing

    @staticmethod
    def _field_text(fld: TemplateField, values: Mapping[str, str], data: Mapping[str, str],
                    completion: date) -> str:
        if fld.data_key and data.get(fld.data_key):
            return data[fld.data_key]
        pattern = fld.text if fld.text is not None else DEFAULT_TEXT[fld.kind]
        when = _format_date(completion, fld.date_format)
        return clean_text(_fill(pattern, {**values, "completion_date": when}))
