"""Fonts for certificates: which TrueType faces exist, loaded once per process, and which face draws which text.

Fonts (Debian packages; see :meth:`FontSet.default`): DejaVu Serif/Sans (``fonts-dejavu-core``) cover
Latin with accents (incl. Vietnamese), Greek and Cyrillic; DejaVu Sans adds Armenian, Georgian, Hebrew and
Arabic glyphs (drawn left to right, unshaped); WenQuanYi Micro Hei (``fonts-wqy-microhei``) covers Chinese,
Japanese kana and Korean Hangul; Droid Sans Fallback (``fonts-droid-fallback``) is a last CJK fallback.
Each string is drawn in the first font that has every character; a mix no font covers alone is split into
runs across fonts; a character no font has is drawn in the field's own font as its .notdef box, never an
error. Without DejaVu, reportlab's bundled Vera (Latin only) is used.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import reportlab
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont

_TRUETYPE = Path("/usr/share/fonts/truetype")
_DEJAVU = _TRUETYPE / "dejavu"
_VERA = Path(reportlab.__file__).parent / "fonts"  # Latin-only last resort shipped inside reportlab


@dataclass(frozen=True, slots=True)
class FontFace:
    """One TrueType file (``index`` picks a face inside a .ttc collection)."""

    path: Path
    index: int = 0


def _first(*paths: Path) -> FontFace:
    return FontFace(next((p for p in paths if p.is_file()), paths[-1]))


@dataclass(frozen=True)
class FontSet:
    """The faces a renderer may use: serif/sans styles first, then script fallbacks in order."""

    serif: FontFace
    serif_bold: FontFace
    serif_italic: FontFace
    sans: FontFace
    sans_bold: FontFace
    fallbacks: tuple[FontFace, ...] = ()

    @classmethod
    def default(cls) -> FontSet:
        """DejaVu + WenQuanYi Micro Hei + Droid Sans Fallback where installed, reportlab's Vera otherwise."""
        cjk = ("wqy/wqy-microhei.ttc", "droid/DroidSansFallbackFull.ttf")
        fallbacks = tuple(FontFace(p) for p in (_TRUETYPE / c for c in cjk) if p.is_file())
        return cls(
            serif=_first(_DEJAVU / "DejaVuSerif.ttf", _VERA / "Vera.ttf"),
            serif_bold=_first(_DEJAVU / "DejaVuSerif-Bold.ttf", _VERA / "VeraBd.ttf"),
            serif_italic=_first(_DEJAVU / "DejaVuSerif-Italic.ttf", _VERA / "VeraIt.ttf"),
            sans=_first(_DEJAVU / "DejaVuSans.ttf", _VERA / "Vera.ttf"),
            sans_bold=_first(_DEJAVU / "DejaVuSans-Bold.ttf", _VERA / "VeraBd.ttf"),
            fallbacks=fallbacks,
        )

    def chain(self, font: str, style: str) -> tuple[FontFace, ...]:
        """Faces to try for a field, its own face first; italic falls back to upright faces."""
        own = {
            ("serif", "regular"): self.serif,
            ("serif", "bold"): self.serif_bold,
            ("serif", "italic"): self.serif_italic,
            ("sans", "bold"): self.sans_bold,
        }.get((font, style), self.sans)
        sans = self.sans_bold if style == "bold" else self.sans
        return tuple(dict.fromkeys((own, sans, *self.fallbacks)))



@dataclass(frozen=True, slots=True)
class LoadedFont:
    """A registered face: its reportlab name, character map and vertical metrics (per point)."""

    name: str
    cmap: Mapping[int, int]
    ascent: float
    descent: float


# Registered once per process: parsing a CJK font takes ~0.1 s, far more than a whole certificate.
_FONTS: dict[FontFace, LoadedFont] = {}
_FONT_LOCK = threading.Lock()


def load_font(face: FontFace) -> LoadedFont:
    loaded = _FONTS.get(face)
    if loaded is None:
        with _FONT_LOCK:
            loaded = _FONTS.get(face)
            if loaded is None:
                name = f"Cert-{face.path.stem}-{face.index}"
                if any(f.name == name for f in _FONTS.values()):  # same file name in another directory
                    name += "-" + hashlib.sha256(str(face.path).encode()).hexdigest()[:8]
                # asciiReadable=False: otherwise every subset carries all 95 ASCII glyphs, used or not.
                ttf = TTFont(name, str(face.path), subfontIndex=face.index, asciiReadable=False)
                pdfmetrics.registerFont(ttf)
                loaded = LoadedFont(name, ttf.face.charToGlyph, ttf.face.ascent / 1000, -ttf.face.descent / 1000)
                _FONTS[face] = loaded
    return loaded



def font_runs(text: str, chain: Sequence[FontFace]) -> list[tuple[LoadedFont, str]]:
    """Split ``text`` into (font, run) pairs: one run when a single face covers it all."""
    fonts = [load_font(f) for f in chain]
    codes = [ord(c) for c in text]
    for font in fonts:
        if all(c in font.cmap for c in codes):
            return [(font, text)]
    runs: list[tuple[LoadedFont, str]] = []
    for char, code in zip(text, codes, strict=True):
        if runs and code in runs[-1][0].cmap:  # spaces and punctuation stay in the run they are in
            font = runs[-1][0]
        else:
            font = next((f for f in fonts if code in f.cmap), fonts[0])
        if runs and runs[-1][0] is font:
            runs[-1] = (font, runs[-1][1] + char)
        else:
            runs.append((font, char))
    return runs

