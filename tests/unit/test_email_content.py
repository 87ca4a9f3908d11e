"""Email content: templates, sandboxed rendering, the MIME composer, Message-IDs, address checks, backoff."""

from __future__ import annotations

import email
import email.policy
import hashlib
import random
import re
import time
from pathlib import Path

import pytest

from adapters.email.delivery import RetryPolicy
from content.email import (
    EmailRenderer,
    RenderedEmail,
    TemplateRenderError,
    TemplateStore,
    UnknownTemplate,
    address_problem,
    ascii_address,
    compose_message,
    message_id_for,
)

RECIPIENT = {"firstname": "Zoë", "lastname": "Ångström", "email": "zoe@example.org"}
REMINDER_DATA = {
    "course_name": "Workplace safety",
    "due_date": "1 December 2026",
    "course_url": "https://moodle.example.org/course/view.php?id=42",
}


@pytest.fixture
def renderer() -> EmailRenderer:
    return EmailRenderer(TemplateStore())


def write_template(base: Path, template_id: str, subject: str, text: str = "text", html: str = "<p>html</p>") -> None:
    folder = base / template_id
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text(subject, encoding="utf-8")
    (folder / "body.txt").write_text(text, encoding="utf-8")
    (folder / "body.html").write_text(html, encoding="utf-8")


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


# ---- templates --------------------------------------------------------------------------------------
def test_builtin_templates_load() -> None:
    store = TemplateStore()
    for template_id in ("course_reminder", "certificate_ready"):
        template = store.get(template_id)
        assert template.id == template_id
        assert "{{" in template.subject and "\n" not in template.subject
        assert "{{ firstname }}" in template.text and "<html" in template.html


@pytest.mark.parametrize("bad_id", ["../course_reminder", "course_reminder/../x", "Course", "", "a" * 65, "a.b", "/etc"])
def test_invalid_or_unknown_template_ids_are_refused(bad_id: str) -> None:
    with pytest.raises(UnknownTemplate):
        TemplateStore().get(bad_id)


def test_extra_dir_adds_and_overrides_templates(tmp_path: Path) -> None:
    write_template(tmp_path, "course_reminder", "Site reminder for {{ firstname }}")
    write_template(tmp_path, "welcome", "Welcome {{ firstname }}")
    renderer = EmailRenderer(TemplateStore(tmp_path))
    assert renderer.render("course_reminder", RECIPIENT, {}).subject == "Site reminder for Zoë"
    assert renderer.render("welcome", RECIPIENT, {}).subject == "Welcome Zoë"
    assert EmailRenderer(TemplateStore()).render("certificate_ready", RECIPIENT, {"course_name": "C", "certificate_url": "u"})


# ---- rendering --------------------------------------------------------------------------------------
def test_course_reminder_renders_for_the_recipient(renderer: EmailRenderer) -> None:
    out = renderer.render("course_reminder", RECIPIENT, REMINDER_DATA)
    assert out.subject == "Reminder: Workplace safety is due 1 December 2026"
    assert out.text.startswith("Dear Zoë,\n")
    assert REMINDER_DATA["course_url"] in out.text and "zoe@example.org" in out.text
    assert 'href="https://moodle.example.org/course/view.php?id=42"' in out.html


def test_certificate_ready_renders_optional_verification_code(renderer: EmailRenderer) -> None:
    data = {"course_name": "First aid", "certificate_url": "https://files.example.org/c/1.pdf"}
    without = renderer.render("certificate_ready", RECIPIENT, data)
    with_code = renderer.render("certificate_ready", RECIPIENT, {**data, "verification_code": "AB12CD"})
    assert "Zoë Ångström" in without.text and "Verification code" not in without.text
    assert "Verification code: AB12CD" in with_code.text and "AB12CD" in with_code.html


def test_html_is_escaped_and_text_is_not(renderer: EmailRenderer) -> None:
    data = {**REMINDER_DATA, "course_name": '<script>alert("x")</script> & Co'}
    out = renderer.render("course_reminder", RECIPIENT, data)
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co" in out.html
    assert '<script>alert("x")</script> & Co' in out.text
    assert out.subject.startswith('Reminder: <script>alert("x")</script> & Co')


def test_template_syntax_in_data_stays_literal(renderer: EmailRenderer) -> None:
    data = {**REMINDER_DATA, "course_name": "{{ 7*7 }} {% for x in range(3) %}x{% endfor %} {{ ''.__class__ }}"}
    out = renderer.render("course_reminder", RECIPIENT, data)
    assert "{{ 7*7 }} {% for x in range(3) %}x{% endfor %} {{ ''.__class__ }}" in out.text
    assert "49" not in out.text and "<class" not in out.text


def test_recipient_fields_win_over_template_data(renderer: EmailRenderer) -> None:
    out = renderer.render("course_reminder", RECIPIENT, {**REMINDER_DATA, "firstname": "Mallory"})
    assert out.text.startswith("Dear Zoë,") and "Mallory" not in out.text


def test_a_part_setting_a_name_changes_only_itself_and_jinja_globals_work_in_every_part(tmp_path: Path) -> None:
    write_template(tmp_path, "sets", subject='{% set firstname = "Subject" %}Hi {{ firstname }}',
                   text='{% set lastname = "Text" %}{{ firstname }} {{ lastname }} '
                        "{% for i in range(3) %}{{ i }}{% endfor %} {{ dict(a=1)['a'] }}",
                   html="<p>{{ firstname }} {{ lastname }} {% set ns = namespace(n=2) %}{{ ns.n }}</p>")
    data = {"firstname": "Ann", "lastname": "Lee"}
    renderer = EmailRenderer(TemplateStore(tmp_path))
    first = renderer.render("sets", data, {})
    assert (first.subject, first.text, first.html) == ("Hi Subject", "Ann Text 012 1", "<p>Ann Lee 2</p>")
    assert renderer.render("sets", data, {}) == first and data == {"firstname": "Ann", "lastname": "Lee"}


def test_subject_is_one_line(renderer: EmailRenderer) -> None:
    data = {**REMINDER_DATA, "course_name": "Safety\r\nBcc: victim@example.org\x00\x1b\u2028x"}
    out = renderer.render("course_reminder", RECIPIENT, data)
    assert out.subject == "Reminder: Safety Bcc: victim@example.org x is due 1 December 2026"


def test_missing_variable_is_a_clear_render_error(renderer: EmailRenderer) -> None:
    data = {k: v for k, v in REMINDER_DATA.items() if k != "course_name"}
    with pytest.raises(TemplateRenderError) as caught:
        renderer.render("course_reminder", RECIPIENT, data)
    assert str(caught.value) == "template 'course_reminder': 'course_name' is undefined"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ lipsum.__globals__ }}",
        "{% set x = [] %}{{ x.append(1) }}",
        "{{ '{0.__class__.__mro__}'.format(firstname) }}",
        "{{ 1/0 }}",
        "{% for %}",
    ],
)
def test_sandbox_refuses_unsafe_templates(tmp_path: Path, source: str) -> None:
    write_template(tmp_path, "evil", "subject", text=source)
    with pytest.raises(TemplateRenderError) as caught:
        EmailRenderer(TemplateStore(tmp_path)).render("evil", RECIPIENT, {})
    assert str(caught.value).startswith("template 'evil'")


def test_compiled_templates_are_cached(tmp_path: Path) -> None:
    write_template(tmp_path, "cached", "v1 {{ firstname }}")
    renderer = EmailRenderer(TemplateStore(tmp_path))
    assert renderer.render("cached", RECIPIENT, {}).subject == "v1 Zoë"
    (tmp_path / "cached" / "subject.txt").write_text("v2 {{ firstname }}", encoding="utf-8")
    assert renderer.render("cached", RECIPIENT, {}).subject == "v1 Zoë"


# ---- composer -----------------------------------------------------------------------------------------
NAMES = ["Zoë Ångström", "Иван Петров", "李雷", 'Anne "The Boss" O\'Neil, Jr.', "Plain User", ""]


@pytest.mark.parametrize("name", NAMES)
def test_composed_message_round_trips_through_the_email_parser(name: str) -> None:
    rendered = RenderedEmail(
        subject=f"Ваш сертификат готов — {name} ✓",
        text=f"Dear {name},\nLine with = sign and trailing space \n" + "long " * 60 + "\nend",
        html=f"<p>Dear {name},</p>\n<p>{'€' * 300}</p>",
    )
    message_id = message_id_for("job-1", 7, "offload.example.org", key=K)
    raw = compose_message(
        rendered, from_address="noreply@moodle.example.org", from_name="Moodle Académie",
        to_address="learner@example.org", to_name=name, message_id=message_id,
        headers={"X-Offload-Job": "job-1", "List-Unsubscribe": "<https://moodle.example.org/unsub?u=7>"},
    )
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    raw.decode("ascii")  # 7-bit clean: everything non-ASCII is encoded
    msg = parse(raw)
    assert not msg.defects
    assert msg["From"].addresses[0].display_name == "Moodle Académie"
    assert msg["From"].addresses[0].addr_spec == "noreply@moodle.example.org"
    assert msg["To"].addresses[0].display_name == name
    assert msg["To"].addresses[0].addr_spec == "learner@example.org"
    assert msg["Subject"] == rendered.subject
    assert msg["Message-ID"] == message_id
    assert msg["MIME-Version"] == "1.0"
    assert msg["X-Offload-Job"] == "job-1"
    assert msg["List-Unsubscribe"] == "<https://moodle.example.org/unsub?u=7>"
    assert msg["Date"].datetime.timestamp() == pytest.approx(time.time(), abs=5)
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    # The parser hands back the wire's CRLF line ends; the content is otherwise identical.
    assert plain.get_content().replace("\r\n", "\n") == rendered.text
    assert html.get_content().replace("\r\n", "\n") == rendered.html


@pytest.mark.parametrize("field", ["subject", "to_name", "from_name", "header"])
def test_no_header_injection(field: str) -> None:
    evil = "Hello\r\nBcc: victim@example.org\r\n\r\nbody\nX-Evil: 1\x00"
    rendered = RenderedEmail(subject=evil if field == "subject" else "Hi", text="t", html="<p>h</p>")
    raw = compose_message(
        rendered, from_address="noreply@moodle.example.org", from_name=evil if field == "from_name" else "Moodle",
        to_address="learner@example.org", to_name=evil if field == "to_name" else "Learner",
        message_id="<abc@example.org>", headers={"X-Note": evil} if field == "header" else {},
    )
    msg = parse(raw)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert b"\x00" not in raw
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


def test_unsafe_addresses_and_extra_headers_are_refused() -> None:
    rendered = RenderedEmail("s", "t", "h")
    common = {"from_address": "a@example.org", "from_name": "", "to_name": "", "message_id": "<m@x.org>"}
    for address in ["victim@example.org>\r\nBcc: x@y.org", "a@b.org, c@d.org", "no-at-sign", "<a@b.org>"]:
        with pytest.raises(ValueError):
            compose_message(rendered, to_address=address, **common)
    for name in ["From", "bcc", "Content-Type", "Bad Name", "X:Y"]:
        with pytest.raises(ValueError):
            compose_message(rendered, to_address="t@example.org", headers={name: "v"}, **common)


def test_international_domain_is_idna_encoded() -> None:
    raw = compose_message(
        RenderedEmail("s", "t", "h"), from_address="a@example.org", from_name="", to_address="joerg@bücher.de",
        to_name="", message_id="<m@x.org>",
    )
    assert parse(raw)["To"].addresses[0].addr_spec == "joerg@xn--bcher-kva.de"


@pytest.mark.parametrize("address", ["learner@example.org", "joerg@bücher.de", "a@Bücher.Example.org"])
def test_providers_get_the_address_to_header_carries(address: str) -> None:
    raw = compose_message(
        RenderedEmail("s", "t", "h"), from_address="a@example.org", from_name="", to_address=address,
        to_name="", message_id="<m@x.org>",
    )
    assert ascii_address(address) == parse(raw)["To"].addresses[0].addr_spec
    assert ascii_address(address).isascii()


def compose_plain(rendered: RenderedEmail, message_id: str = "<m@x.org>") -> bytes:
    return compose_message(rendered, from_address="a@example.org", from_name="", to_address="b@example.org",
                           to_name="", message_id=message_id)


def test_long_ascii_subject_is_folded_and_read_back_exactly() -> None:
    subject = " ".join(f"word{i}" for i in range(80))
    raw = compose_plain(RenderedEmail(subject, "t", ""))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    msg = parse(raw)
    assert msg["Subject"] == subject and msg.get_content_type() == "text/plain"  # no html: a single part


def test_boundary_is_deterministic_per_message_id() -> None:
    def boundary(message_id: str) -> str:
        return parse(compose_plain(RenderedEmail("s", "t", "<p>h</p>"), message_id)).get_boundary() or ""

    assert boundary("<1@x.org>") == boundary("<1@x.org>") != boundary("<2@x.org>")


def transfer_encodings(raw: bytes) -> list[str]:
    return [part["Content-Transfer-Encoding"] for part in parse(raw).walk() if not part.is_multipart()]


def assert_parts_read_back(raw: bytes, rendered: RenderedEmail) -> None:
    msg = parse(raw)
    assert not msg.defects and not [part.defects for part in msg.walk() if part.defects]
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and plain.get_content().replace("\r\n", "\n") == rendered.text
    assert html is not None and html.get_content().replace("\r\n", "\n") == rendered.html


def test_printable_ascii_parts_go_as_they_are_with_every_equals_sign_one_byte() -> None:
    rendered = RenderedEmail("Reminder", "Dear Ann,\n\tdue = today \n" + "long " * 150 + "\n",
                             '<p style="color:#333">Dear Ann</p>\n<a href="https://x.org/?a=1&b=2">go</a>\n')
    raw = compose_plain(rendered)
    assert transfer_encodings(raw) == ["7bit", "7bit"]
    assert b'<p style="color:#333">' in raw and b"?a=1&b=2" in raw and b"=3D" not in raw
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert_parts_read_back(raw, rendered)


@pytest.mark.parametrize("text", ["x" * 999, "a line\nand " + "y" * 995 + "\nend", "form\x0cfeed", "nul\x00here",
                                  "bell\x07", "del\x7f", "Zoë", "vertical\x0btab"])
def test_a_part_that_is_not_printable_ascii_in_short_lines_goes_quoted_printable(text: str) -> None:
    rendered = RenderedEmail("s", text, "<p>h</p>")
    raw = compose_plain(rendered)
    assert transfer_encodings(raw) == ["quoted-printable", "7bit"]
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    raw.decode("ascii")
    assert_parts_read_back(raw, rendered)


def test_a_part_holding_the_boundary_goes_quoted_printable_so_the_parts_stay_two() -> None:
    boundary = parse(compose_plain(RenderedEmail("s", "t", "<p>h</p>"))).get_boundary()
    assert boundary
    rendered = RenderedEmail("s", f"before\n--{boundary}\nContent-Type: text/html\n\nafter",
                             f"<p>--{boundary}--</p>")
    raw = compose_plain(rendered)
    assert transfer_encodings(raw) == ["quoted-printable", "quoted-printable"]
    assert_parts_read_back(raw, rendered)


def test_a_text_only_message_in_plain_ascii_goes_7bit() -> None:
    rendered = RenderedEmail("s", "Dear Ann,\r\nsee = here\rend", "")
    msg = parse(compose_plain(rendered))
    assert (msg.get_content_type(), msg["Content-Transfer-Encoding"]) == ("text/plain", "7bit")
    assert msg.get_content().replace("\r\n", "\n") == "Dear Ann,\nsee = here\nend\n"  # the message ends with CRLF


# ---- message ids, addresses, retry policy ----------------------------------------------------------
K = b"unit-test-message-id-key"


def test_message_ids_are_deterministic_and_distinct() -> None:
    first = message_id_for("job-1", 42, "offload.example.org", key=K)
    assert first == message_id_for("job-1", "42", "offload.example.org", key=K)
    assert re.fullmatch(r"<[0-9a-f]{40}@offload\.example\.org>", first)
    assert len({first, message_id_for("job-1", 43, "offload.example.org", key=K), message_id_for("job-2", 42, "offload.example.org", key=K)}) == 3
    assert message_id_for("j", 1, "evil.org>\r\nBcc: x", key=K).endswith("@evil.orgBccx>")


def test_message_ids_are_keyed_so_they_cannot_be_computed_from_outside() -> None:
    """An unkeyed sha256(job_id, userid) could be computed by anyone who knows a job id and a userid."""
    unkeyed = "<" + hashlib.sha256(b"job-1\x0042").hexdigest()[:40] + "@offload.example.org>"
    keyed = message_id_for("job-1", 42, "offload.example.org", key=K)
    assert keyed != unkeyed
    assert keyed != message_id_for("job-1", 42, "offload.example.org", key=b"another deployment's key")


@pytest.mark.parametrize(
    "address", ["learner@example.org", "first.last+tag@sub.example.co.uk", "a@bücher.de", "x_y-z@a-b.example"]
)
def test_usable_addresses(address: str) -> None:
    assert address_problem(address) is None


@pytest.mark.parametrize(
    "address",
    [
        "", "plain", "a@@example.org", "a@b@example.org", "@example.org", "a@localhost", "a b@example.org",
        "a@example.org\r\nBcc: x@y.org", '"quoted"@example.org', "a,b@example.org", "<a@example.org>",
        "a@-bad.example.org", "a@exa_mple.org", "a@example..org", "x" * 65 + "@example.org",
        "a@" + "b" * 250 + ".org", "jörg@example.org", ".a@example.org", "a@example.123",
    ],
)
def test_unusable_addresses(address: str) -> None:
    assert address_problem(address)


def test_retry_policy_backs_off_exponentially_with_full_jitter() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=0.5, max_delay=30.0)
    rng = random.Random(7)
    for attempt in range(1, 20):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter reaches up to the ceiling
    assert policy.delay(10_000, rng) <= 30.0
    assert [policy.delay(3, random.Random(1)) for _ in range(2)] == [policy.delay(3, random.Random(1))] * 2
    assert policy.throttle_rounds == 50 and RetryPolicy(max_throttle_rounds=3).throttle_rounds == 3
