"""Versioned certificate templates: frozen layout values stored as ``<id>/v<N>.json`` files.

A published version is never rewritten, so a certificate issued with ``course_completion`` v1 can be
re-rendered byte for byte after v2 ships.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "templates" / "certificates"
TEMPLATE_ID = re.compile(r"^[a-z0-9_-]{1,64}$")
_VERSION_FILE = re.compile(r"^v([1-9][0-9]{0,8})\.json$")
_COLOUR = r"^#[0-9a-fA-F]{6}$"

FieldKind = Literal[
    "learner_name",
    "course_name",
    "completion_date",
    "custom_text",
    "certificate_code",
    "qr_code",
    "signature_image",
    "signer_name",
    "title",
]
Colour = Annotated[str, Field(pattern=_COLOUR)]
Millimetres = Annotated[float, Field(ge=0, le=1000)]

# What a text field shows when the template gives no ``text``; ``{name}`` placeholders are filled per render.
DEFAULT_TEXT: dict[str, str] = {
    "learner_name": "{learner_name}",
    "course_name": "{course_name}",
    "completion_date": "{completion_date}",
    "certificate_code": "{certificate_code}",
    "signer_name": "",
    "title": "",
    "custom_text": "",
}


class TemplateNotFound(LookupError):
    """No such template id or version."""


class TemplateField(BaseModel):
    """One placed element; the box is in mm from the page's top-left corner, text is centred vertically in it.

    ``text`` may contain ``{learner_name}``, ``{course_name}``, ``{completion_date}``, ``{certificate_code}``
    and ``{verification_url}``; ``data_key`` takes the text from ``template_data`` instead (``text`` is then
    the fallback). A line of text shrinks from ``max_font_size`` (or ``font_size``) down to ``min_font_size``
    to fit the box width, and is cut with an ellipsis below that.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FieldKind
    x: Millimetres
    y: Millimetres
    width: Annotated[float, Field(gt=0, le=1000)]
    height: Annotated[float, Field(gt=0, le=1000)]
    text: str | None = None
    data_key: str | None = None
    date_format: str = "%-d %B %Y"
    font: Literal["serif", "sans"] = "serif"
    style: Literal["regular", "bold", "italic"] = "regular"
    font_size: Annotated[float, Field(gt=0, le=200)] = 12
    max_font_size: Annotated[float, Field(gt=0, le=200)] | None = None
    min_font_size: Annotated[float, Field(gt=0, le=200)] | None = None
    letter_spacing: Annotated[float, Field(ge=0, le=20)] = 0
    align: Literal["left", "center", "right"] = "center"
    colour: Colour = "#1f2933"
    rule_above: bool = False  # a line across the top of the box, e.g. the signature line
    rule_below: bool = False
    rule_colour: Colour | None = None
    image: str | None = None  # signature_image: a file beside the template's version files

    @property
    def start_size(self) -> float:
        return self.max_font_size or self.font_size

    @property
    def smallest_size(self) -> float:
        return min(self.min_font_size or self.start_size, self.start_size)

    @model_validator(mode="after")
    def _check_kind(self) -> TemplateField:
        if self.kind == "signature_image" and not self.image:
            raise ValueError("a signature_image field needs 'image'")
        if self.image and (Path(self.image).is_absolute() or ".." in Path(self.image).parts):
            raise ValueError("'image' must be a file beside the template, not a path out of it")
        return self


class CertificateTemplate(BaseModel):
    """A whole certificate page: size, orientation, background, border and the placed fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=TEMPLATE_ID.pattern)
    version: int = Field(ge=1)
    name: str = ""
    page_size: Literal["A4", "Letter"] = "A4"
    orientation: Literal["landscape", "portrait"] = "landscape"
    background_image: str | None = None  # a file beside the version files, stretched over the page
    background_colour: Colour | None = None
    border: Literal["none", "single", "double", "double_ornate"] = "double"
    border_colour: Colour = "#1d3557"
    border_accent_colour: Colour = "#b08d57"
    fields: tuple[TemplateField, ...]
    # The directory holding the version file, set by the store so images resolve; not part of the value.
    _asset_dir: Path | None = PrivateAttr(default=None)

    @property
    def asset_dir(self) -> Path | None:
        return self._asset_dir

    @field_validator("background_image")
    @classmethod
    def _relative_asset(cls, value: str | None) -> str | None:
        if value and (Path(value).is_absolute() or ".." in Path(value).parts):
            raise ValueError("'background_image' must be a file beside the template")
        return value

    @property
    def page_mm(self) -> tuple[float, float]:
        """(width, height) of the page in millimetres, orientation applied."""
        w, h = (210.0, 297.0) if self.page_size == "A4" else (215.9, 279.4)
        return (h, w) if self.orientation == "landscape" else (w, h)

    def asset(self, name: str) -> Path:
        """Path of an image shipped beside the template's version files."""
        if self.asset_dir is None:
            raise FileNotFoundError(f"template {self.id} v{self.version} has no asset directory for {name!r}")
        return self.asset_dir / name


class CertificateTemplateStore:
    """Reads templates from the built-in and an optional deployment directory; publishes new versions.

    Versions are append-only: ``publish`` creates ``v<newest+1>.json`` with an exclusive create, so neither a
    bug nor two publishers racing can change a version that certificates were already issued with.
    """

    def __init__(self, extra_dir: Path | None = None, *, builtin_dir: Path = BUILTIN_DIR) -> None:
        self._builtin = builtin_dir
        self._extra = Path(extra_dir) if extra_dir is not None else None
        self._cache: dict[tuple[str, int], CertificateTemplate] = {}

    def _dirs(self) -> Iterable[Path]:
        yield self._builtin
        if self._extra is not None:
            yield self._extra

    def _files(self, template_id: str) -> dict[int, Path]:
        if not TEMPLATE_ID.match(template_id):
            raise ValueError(f"invalid template id {template_id!r}: use [a-z0-9_-]{{1,64}}")
        found: dict[int, Path] = {}
        for root in self._dirs():
            folder = root / template_id
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                m = _VERSION_FILE.match(entry.name)
                if m is None:
                    continue
                version = int(m.group(1))
                if version in found:
                    raise ValueError(f"template {template_id} v{version} exists in two directories")
                found[version] = entry
        return found

    def ids(self) -> list[str]:
        """Every template id that has at least one version."""
        names = {p.name for root in self._dirs() if root.is_dir() for p in root.iterdir() if p.is_dir()}
        return sorted(n for n in names if TEMPLATE_ID.match(n) and self.versions(n))

    def versions(self, template_id: str) -> list[int]:
        """Published versions of a template, oldest first (empty if unknown)."""
        return sorted(self._files(template_id))

    def get(self, template_id: str, version: int | None = None) -> CertificateTemplate:
        """One version of a template, or the newest when ``version`` is None."""
        files = self._files(template_id)
        if not files:
            raise TemplateNotFound(f"no certificate template {template_id!r}")
        version = max(files) if version is None else version
        if version not in files:
            raise TemplateNotFound(f"certificate template {template_id!r} has no version {version}")
        cached = self._cache.get((template_id, version))
        if cached is not None:
            return cached
        path = files[version]
        data = json.loads(path.read_text(encoding="utf-8"))
        template = CertificateTemplate.model_validate(data)
        template._asset_dir = path.parent
        if (template.id, template.version) != (template_id, version):
            raise ValueError(f"{path} declares {template.id} v{template.version}")
        self._cache[(template_id, version)] = template
        return template

    def publish(self, template: CertificateTemplate) -> CertificateTemplate:
        """Store ``template`` as a NEW version (newest + 1, whatever its ``version`` says) and return it."""
        if self._extra is None:
            raise RuntimeError("publishing needs a writable extra_dir")
        folder = self._extra / template.id
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            existing = self.versions(template.id)
            published = template.model_copy(update={"version": (max(existing) + 1) if existing else 1})
            body = json.dumps(published.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
            path = folder / f"v{published.version}.json"
            try:
                # "x": fails instead of overwriting when another publisher took this number first.
                with open(path, "x", encoding="utf-8") as fh:
                    fh.write(body)
                    fh.flush()
                    os.fsync(fh.fileno())
            except FileExistsError:
                continue
            return self.get(template.id, published.version)
