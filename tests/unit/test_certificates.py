"""Certificate building blocks: template versions, layout, deterministic PDFs, codes, scripts, QR code."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.storage.base import object_key
from content.certificates.codes import certificate_code, normalise_code, verification_url
from content.certificates.render import FontSet, clean_text, fit_line, font_runs
from content.certificates.templates import CertificateTemplateStore, TemplateField, TemplateNotFound
from tests.support.certificates import (
    SECRET,
    builtin_template,
    decode_qr,
    pdf_text,
    render_inputs,
    renderer,
)

CODE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}$")
REPO = Path(__file__).resolve().parents[2]


# --- templates ------------------------------------------------------------------------------------


def test_builtin_template_loads_with_every_kind_it_needs() -> None:
    template = builtin_template()
    assert (template.id, template.page_size, template.orientation) == ("course_completion", "A4", "landscape")
    kinds = {f.kind for f in template.fields}
    assert {"title", "learner_name", "course_name", "completion_date", "custom_text", "signer_name",
            "certificate_code", "qr_code"} <= kinds
    assert CertificateTemplateStore().versions("course_completion")[0] == 1


def test_publish_adds_versions_and_never_rewrites_one(tmp_path: Path) -> None:
    store = CertificateTemplateStore(extra_dir=tmp_path)
    builtin_file = Path(builtin_template().asset_dir or "") / "v1.json"
    builtin_before = builtin_file.read_bytes()
    changed = builtin_template().model_copy(update={"name": "changed title", "version": 1})

    v2 = store.publish(changed)
    # Someone hand-placed v3 meanwhile: publishing again must skip to v4 and leave v3 alone.
    squatter = tmp_path / "course_completion" / "v3.json"
    squatter.write_text(json.dumps({**json.loads((tmp_path / "course_completion" / "v2.json").read_text()),
                                    "version": 3, "name": "hand made"}))
    v4 = store.publish(changed.model_copy(update={"name": "changed again"}))

    assert (v2.version, v4.version) == (2, 4)
    assert store.versions("course_completion") == [1, 2, 3, 4]
    assert builtin_file.read_bytes() == builtin_before
    assert store.get("course_completion", 3).name == "hand made"
    assert store.get("course_completion").name == "changed again"
    assert store.get("course_completion", 1).name != "changed title"
    assert CertificateTemplateStore(extra_dir=tmp_path).get("course_completion", 2).name == "changed title"


def test_an_issued_certificate_renders_the_same_after_a_new_version(tmp_path: Path) -> None:
    store = CertificateTemplateStore(extra_dir=tmp_path)
    before = renderer().render(store.get("course_completion", 1), **render_inputs())
    store.publish(builtin_template().model_copy(update={"border": "single"}))
    assert renderer().render(store.get("course_completion", 1), **render_inputs()) == before
    assert renderer().render(store.get("course_completion"), **render_inputs()) != before


def test_signature_and_background_images_come_from_beside_the_template(tmp_path: Path) -> None:
    from PIL import Image, ImageDraw

    folder = tmp_path / "course_completion"
    folder.mkdir()
    signature = Image.new("RGBA", (400, 120), (0, 0, 0, 0))
    stroke = [(10, 90), (120, 20), (220, 100), (390, 30)]
    ImageDraw.Draw(signature).line(stroke, fill=(20, 30, 60, 255), width=6)
    signature.save(folder / "signature.png")
    Image.new("RGB", (297, 210), (250, 246, 235)).save(folder / "paper.png")
    base = builtin_template()
    signed = base.model_copy(update={
        "background_image": "paper.png",
        "fields": (*base.fields, TemplateField(kind="signature_image", x=48, y=146, width=60, height=16,
                                               image="signature.png")),
    })
    published = CertificateTemplateStore(extra_dir=tmp_path).publish(signed)
    pdf = renderer().render(published, **render_inputs())
    assert pdf.count(b"/Subtype /Image") >= 2  # paper, signature (and its alpha mask)
    assert renderer().render(published, **render_inputs()) == pdf
    with pytest.raises(ValueError):
        TemplateField(kind="signature_image", x=0, y=0, width=1, height=1, image="../../etc/passwd")


@pytest.mark.parametrize("bad", ["", "Upper", "../etc", "a/b", "x" * 65, "dot.ted"])
def test_template_ids_are_checked(bad: str) -> None:
    with pytest.raises(ValueError):
        CertificateTemplateStore().get(bad)


def test_unknown_template_or_version() -> None:
    with pytest.raises(TemplateNotFound):
        CertificateTemplateStore().get("no_such_template")
    with pytest.raises(TemplateNotFound):
        CertificateTemplateStore().get("course_completion", 999)


# --- layout ---------------------------------------------------------------------------------------


def test_a_long_name_shrinks_between_max_and_min() -> None:
    chain = FontSet.default().chain("serif", "bold")
    name = "Maximiliana Theodora Alexandrescu-Wolfenstein"
    line = fit_line(name, chain, box_width=500, start=34, smallest=14)
    assert 14 <= line.size < 34 and not line.truncated
    assert line.width <= 500 and line.text == name


def test_a_very_long_name_is_cut_with_an_ellipsis_at_min_size() -> None:
    chain = FontSet.default().chain("serif", "bold")
    name = "Wolfeschlegelsteinhausenbergerdorff " * 8
    line = fit_line(name.strip(), chain, box_width=500, start=34, smallest=14)
    assert line.truncated and line.size == 14 and line.width <= 500
    assert line.text.endswith("…") and name.startswith(line.text[:-1])


def test_a_very_long_name_stays_inside_the_page() -> None:
    name = "Anastasia-Konstantina " * 12
    text = pdf_text(renderer().render(builtin_template(), **render_inputs(name)))
    assert "…" in text and "Anastasia-Konstantina" in text
    assert "Occupational Health and Safety Management" in text


def test_text_is_cleaned_to_one_nfc_line() -> None:
    assert clean_text("  Zoe\u0308 \n\t Smith\x00 ") == "Zoë Smith"


def test_mixed_scripts_split_into_runs_and_unknown_characters_do_not_crash() -> None:
    chain = FontSet.default().chain("serif", "regular")
    # One face that covers everything wins (a consistent look); only a mix no face covers is split.
    assert [f.name for f, _ in font_runs("Anna 王", chain)] == ["Cert-wqy-microhei-0"]
    runs = font_runs("שלום 王", chain)
    assert [t for _, t in runs] == ["שלום ", "王"] and runs[0][0].name == "Cert-DejaVuSans-0"
    pdf = renderer().render(builtin_template(), **render_inputs("Ann \U00013000 Lee \U0010fffd"))
    assert "Ann" in pdf_text(pdf)


# --- determinism ----------------------------------------------------------------------------------


def test_same_inputs_give_identical_bytes_and_different_inputs_do_not() -> None:
    first = renderer().render(builtin_template(), **render_inputs())
    assert renderer().render(builtin_template(), **render_inputs()) == first
    assert renderer().render(builtin_template(), **render_inputs("Someone Else")) != first
    assert b"D:20261120000000" in first  # creation date is the completion date, not the clock


def test_a_fresh_process_renders_the_same_bytes() -> None:
    """Fonts registered in another order, another process: still byte-identical."""
    script = (
        "import hashlib,sys\n"
        "from tests.support.certificates import builtin_template, render_inputs, renderer\n"
        "renderer().render(builtin_template(), **render_inputs('王小明 Χρήστος'))\n"
        "pdf = renderer().render(builtin_template(), **render_inputs())\n"
        "sys.stdout.write(hashlib.sha256(pdf).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    here = hashlib.sha256(renderer().render(builtin_template(), **render_inputs())).hexdigest()
    assert out.stdout == here


# --- scripts and QR -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "font"),
    [
        ("Zoë Ångström-Núñez Łukasiewicz", "DejaVuSerif"),
        ("Анна Сергеевна Кузнецова", "DejaVuSerif"),
        ("Νικόλαος Παπαδόπουλος", "DejaVuSerif"),
        ("王小明", "WenQuanYiMicroHei"),
        ("山田 花子", "WenQuanYiMicroHei"),
        ("김민준", "WenQuanYiMicroHei"),
    ],
)
def test_names_in_every_script_are_real_text_in_an_embedded_font(name: str, font: str) -> None:
    pdf = renderer().render(builtin_template(), **render_inputs(name, course_name=f"Safety 101 — {name}"))
    text = pdf_text(pdf)
    assert name in text and f"Safety 101 — {name}" in text
    assert f"+{font}".encode() in pdf and b"/FontFile2" in pdf  # an embedded TrueType subset


def test_qr_code_decodes_to_exactly_the_verification_url() -> None:
    inputs = render_inputs("Анна Кузнецова")
    assert decode_qr(renderer().render(builtin_template(), **inputs)) == [inputs["verification_url"]]


def test_pdf_is_small() -> None:
    sizes = sorted(len(renderer().render(builtin_template(), **render_inputs(f"Learner {i}", userid=i)))
                   for i in range(5))
    assert sizes[2] < 100_000


# --- codes ----------------------------------------------------------------------------------------


def test_codes_are_deterministic_and_well_formed() -> None:
    code = certificate_code(SECRET, "job-1", 42, "course_completion")
    assert CODE.match(code)
    assert code == certificate_code(SECRET, "job-1", "42", "course_completion")
    assert code != certificate_code(SECRET, "job-2", 42, "course_completion")
    assert code != certificate_code(SECRET, "job-1", 42, "other")
    assert code != certificate_code(b"another-secret-of-enough-bytes", "job-1", 42, "course_completion")


def test_codes_are_unique_over_100k_users() -> None:
    codes = {certificate_code(SECRET, "job-big", userid, "course_completion") for userid in range(100_000)}
    assert len(codes) == 100_000


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        certificate_code(b"short", "job", 1, "t")


def test_normalise_code() -> None:
    code = certificate_code(SECRET, "job-1", 42, "course_completion")
    assert normalise_code(code) == code
    assert normalise_code(code.lower().replace("-", "")) == code
    assert normalise_code(f"  {code[:9]} {code[10:]} ") == code
    assert normalise_code("oo1l-IIOO-abcd-efgh") == "0011-1100-ABCD-EFGH"
    for bad in ["", "ABCD-EFGH-JKMN", "ABCD-EFGH-JKMN-PQRU", "ABCD-EFGH-JKMN-PQRS-T", "ABCD?EFGH-JKMN-PQRS"]:
        assert normalise_code(bad) is None
    url = verification_url("https://m.example.org/verify/", code.lower())
    assert url == f"https://m.example.org/verify/{code}"


def test_object_keys_are_safe_paths() -> None:
    key = object_key(7, "abc", 12345, "ABCD-EFGH-JKMN-PQRS")
    assert key == "company-7/job-abc/12345-ABCD-EFGH-JKMN-PQRS.pdf"
    for bad in [("7/..", "j", 1, "C"), (7, "../j", 1, "C"), (7, "j", "a b", "C"), (7, "j", 1, "")]:
        with pytest.raises(ValueError):
            object_key(*bad)
