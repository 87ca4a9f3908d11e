"""The monitoring UI's pure parts: signed sessions, CSRF tokens, safe redirects, escaping, /metrics text."""

from __future__ import annotations

from datetime import UTC, datetime

from api import metrics, ui

ADMINS = {"ops": "ops-secret-0123456789abcdef"}


def sessions() -> ui.Sessions:
    return ui.Sessions(b"s" * 32, hours=1, secure=False)


def test_a_session_reads_back_and_carries_no_secret():
    s = sessions()
    cookie = s.issue("ops", ADMINS["ops"], now=1000)
    session = s.read(cookie, ADMINS, now=1001)
    assert session is not None and session.key_id == "ops" and session.expires == 1000 + 3600
    assert ADMINS["ops"] not in cookie
    assert session.csrf == s.csrf_for(session.nonce) and len(session.csrf) == 64


def test_a_tampered_expired_or_orphaned_session_is_refused():
    s = sessions()
    cookie = s.issue("ops", ADMINS["ops"], now=1000)
    payload, mac = cookie.split(".")
    assert s.read(cookie, ADMINS, now=1000 + 3601) is None  # expired
    assert s.read(f"{payload}.{mac[:-2]}xx", ADMINS, now=1001) is None  # forged MAC
    assert s.read(cookie, {}, now=1001) is None  # key removed (or no longer an admin key)
    assert s.read(cookie, {"ops": "rotated-secret-0123456789"}, now=1001) is None  # key secret rotated
    assert ui.Sessions(b"t" * 32, hours=1, secure=False).read(cookie, ADMINS, now=1001) is None  # other secret
    for junk in (None, "", "a.b.c", "!!!.???", "x" * 2000):
        assert s.read(junk, ADMINS) is None


def test_csrf_tokens_differ_per_session():
    s = sessions()
    a = s.read(s.issue("ops", ADMINS["ops"]), ADMINS)
    b = s.read(s.issue("ops", ADMINS["ops"]), ADMINS)
    assert a and b and a.csrf != b.csrf


def test_after_sign_in_only_our_own_pages_are_targets():
    assert ui._safe_next("/ui/jobs/abc?failed=1") == "/ui/jobs/abc?failed=1"
    for bad in (None, "", "https://evil.example/ui/", "//evil.example/ui/", "/api/v1/jobs", "/ui\\@evil", "/uix"):
        assert ui._safe_next(bad) == "/ui/jobs"


def test_pages_escape_what_comes_from_the_log():
    env = ui._templates()
    html = env.get_template("error.html").render(session=None, csrf_token="", notice=None, path="/ui/x",
                                                 title="<script>alert(1)</script>", message="<b>x</b>")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def test_history_items_name_who_acted():
    row = {"id": 3, "occurred_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
           "event_type": "org.manireports.offload.job.retry-requested.v1", "actor": None,
           "detail": {"requested_by": "ui:ops", "only_retryable": False}}
    item = ui._history_item(row)
    assert item == {"id": 3, "at": "2026-01-02 03:04:05 UTC", "type": "job.retry-requested", "actor": "ui:ops",
                    "summary": "only retryable: False"}
    accepted = {**row, "event_type": "org.manireports.offload.job.accepted.v1", "actor": "2",
                "detail": {"route": "local", "provider": "smtp"}}
    assert ui._history_item(accepted)["actor"] == "Moodle user 2"


def test_certificate_links_are_only_http():
    assert ui._safe_link("https://bucket.example/c.pdf?X-Amz=1") == "https://bucket.example/c.pdf?X-Amz=1"
    assert ui._safe_link("javascript:alert(1)") is None and ui._safe_link(None) is None


def test_metrics_text_is_valid_exposition():
    out = metrics.Exposition()
    out.family("offload_x", "gauge", "help")
    out.sample("offload_x", {"topic": 'a"b\\c\nd'}, 3)
    out.sample("offload_x", {}, 0.5)
    assert out.text() == ('# HELP offload_x help\n# TYPE offload_x gauge\n'
                          'offload_x{topic="a\\"b\\\\c\\nd"} 3\noffload_x 0.5\n')
