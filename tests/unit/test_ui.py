"""The monitoring UI's pure parts: signed sessions, CSRF tokens, safe redirects, escaping, /metrics text."""

from __future__ import annotations

from datetime import UTC, datetime

from api.ui import views
from api.ui.sessions import Sessions

ADMINS = {"ops": "ops-secret-0123456789abcdef"}


def sessions() -> Sessions:
    return Sessions(b"s" * 32, hours=1, secure=False)


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
    assert Sessions(b"t" * 32, hours=1, secure=False).read(cookie, ADMINS, now=1001) is None  # other secret
    for junk in (None, "", "a.b.c", "!!!.???", "x" * 2000):
        assert s.read(junk, ADMINS) is None


def test_csrf_tokens_differ_per_session():
    s = sessions()
    a = s.read(s.issue("ops", ADMINS["ops"]), ADMINS)
    b = s.read(s.issue("ops", ADMINS["ops"]), ADMINS)
    assert a and b and a.csrf != b.csrf


def test_after_sign_in_only_our_own_pages_are_targets():
    assert views.safe_next("/ui/jobs/abc?failed=1") == "/ui/jobs/abc?failed=1"
    for bad in (None, "", "https://evil.example/ui/", "//evil.example/ui/", "/api/v1/jobs", "/ui\\@evil", "/uix"):
        assert views.safe_next(bad) == "/ui/jobs"


def test_pages_escape_what_comes_from_the_log():
    env = views.templates()
    html = env.get_template("error.html").render(session=None, csrf_token="", notice=None, path="/ui/x",
                                                 title="<script>alert(1)</script>", message="<b>x</b>")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def test_history_items_name_who_acted():
    row = {"id": 3, "occurred_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
           "event_type": "org.manireports.offload.job.retry-requested.v1", "actor": None,
           "detail": {"requested_by": "ui:ops", "only_retryable": False}}
    item = views.history_item(row)
    assert item == {"id": 3, "at": "2026-01-02 03:04:05 UTC", "type": "job.retry-requested", "actor": "ui:ops",
                    "summary": "only retryable: False"}
    accepted = {**row, "event_type": "org.manireports.offload.job.accepted.v1", "actor": "2",
                "detail": {"route": "local", "provider": "smtp"}}
    assert views.history_item(accepted)["actor"] == "Moodle user 2"


def test_certificate_links_are_only_http():
    assert views.safe_link("https://bucket.example/c.pdf?X-Amz=1") == "https://bucket.example/c.pdf?X-Amz=1"
    assert views.safe_link("javascript:alert(1)") is None and views.safe_link(None) is None


def test_metrics_exposition_escapes_labels_and_parses_back():
    """The hand-written exposition this replaced was checked line by line; now prometheus_client writes it, and
    what matters is that a label from the log (a topic name) cannot break the format."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from api.metrics import OffloadCollector, Reading

    collector = OffloadCollector(state=None, kafka=None)  # type: ignore[arg-type] - collect() reads no state
    collector.reading = Reading(postgres_up=True, kafka_up=True,
                                jobs=[{"status": "completed", "type": "email", "n": 3}],
                                outcomes=[{"route": "local", "provider": "smtp", "sent": 5, "failed": 1}],
                                callbacks={"succeeded": 3, "failed": 1},
                                lag=[("worker", "app", 'a"b\\c\nd', 7)], seconds=0.5)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'offload_consumer_lag{agent="worker",group="app",topic="a\\"b\\\\c\\nd"} 7.0' in text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("offload_consumer_lag", (("agent", "worker"), ("group", "app"), ("topic", 'a"b\\c\nd')))] == 7
    assert samples[("offload_recipients_total", (("outcome", "failed"), ("provider", "smtp"),
                                                 ("route", "local")))] == 1
    assert samples[("offload_callback_success_ratio", ())] == 0.75
    assert samples[("offload_metrics_source_up", (("source", "postgres"),))] == 1


def test_a_job_waiting_for_its_budget_shows_why_and_the_figures():
    now = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)
    row = {
        "job_id": "waits", "type": "email", "company_id": 7, "status": "waiting", "route": None,
        "route_reason": "company 7 monthly budget 0.05 USD: spent 0.04, this job ~0.01 on sendgrid would pass it: "
                        "waits until the budget allows it (next month, or a larger budget)",
        "provider": "sendgrid", "template_id": "course_reminder", "total_recipients": 10, "succeeded": 0,
        "failed": 0, "duplicates_removed": 0, "batch_count": 0, "batches_done": 0, "fell_back": False,
        "fallback_reason": None, "error_message": None, "problems": None, "createdby": 2, "timecreated": now,
        "timestarted": None, "timecompleted": None, "updated_at": now, "delivered": 0, "bounced": 0,
        "complained": 0, "pacing": None, "estimated_cost": None, "currency": None, "suppressed": 0,
        "template_source": None, "template_version": None, "callback_url": None,
        "budget_wait": {"month": "2026-11", "monthly_budget": 0.05, "spent": 0.045, "estimated_cost": 0.009,
                        "currency": "USD", "provider": "sendgrid", "since": now.isoformat()},
    }
    job = views.job_view(row, [], cancel_requested=False)
    assert job["can_cancel"] and job["budget_wait"]["spent"] == 0.045
    html = views.templates().get_template("job.html").render(
        session=None, csrf_token="", notice=None, path="/ui/jobs/waits", prefix="/ui", title="Job waits", job=job,
        recipients=[], failed_only=False, page=1, has_next=False, page_url=lambda n, failed=False: "#",
        history=[], last_event=0)
    assert 'class="badge badge-waiting">waiting<' in html
    assert "waits until the budget allows it" in html
    assert "waiting for the monthly budget" in html and "2026-11 budget 0.05 USD" in html
    assert "spent 0.04, this job ~0.01 on sendgrid" in " ".join(html.split())
