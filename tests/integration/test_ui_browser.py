"""The monitoring UI in a real headless Chromium against the real worker, projector and API processes.

An admin signs in with an admin API key, finds jobs in the list (filters, newest first), watches a running
job's progress bar move without reloading (server-sent events), retries a job's failures and sees the failed
count drop, and changes a company's cloud settings. The pages are screenshotted into docs/.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from playwright.sync_api import expect
from pydantic import SecretStr

from offload.client import submit_job
from schemas.events import JobRetryRequested
from tests.support.api import SignedClient, api_keys, without_api_keys
from tests.support.browser import ApiProcess, chromium
from tests.support.observe import events, job_row, query, wait_for, wait_for_job
from tests.support.stack import REPO

pytestmark = pytest.mark.integration

ADMIN_KEY, ADMIN_SECRET = "ops", "ops-ui-admin-secret-0123456789"
K7_SECRET = "k7-ui-secret-0123456789abcdef"
# The committed screenshots are refreshed only on request (OFFLOAD_UI_SCREENSHOTS=1), so a test run leaves the
# work tree clean; otherwise they go to .dev/ui-screenshots/.
DOCS = REPO / "docs" if os.environ.get("OFFLOAD_UI_SCREENSHOTS") else REPO / ".dev" / "ui-screenshots"


@pytest.fixture
def ui_stack(settings_factory, topics_for, processes, mail_sink, request):
    """Worker, projector and API processes on fresh topics/schema; yields (settings, api, signed admin client,
    worker)."""
    settings = settings_factory(
        api_keys=api_keys(**{ADMIN_KEY: (ADMIN_SECRET, None), "k7": (K7_SECRET, 7)}),
        ui_session_secret=SecretStr("ui-session-secret-for-tests-0123456789"),
        smtp_port=mail_sink.port,
        # Small batches served one at a time through one SMTP connection: a job runs for several seconds.
        job_batch_size=10, smtp_connections=1,
        retry_base_delay=0.1, retry_max_delay=0.2, max_attempts=2,
        smtp_timeout=300,  # the tests hold the sink's replies while they look at a page; no send gives up meanwhile
    )
    topics_for(settings)
    worker = processes("worker", without_api_keys(settings))
    processes("projector", without_api_keys(settings))
    log_dir = REPO / ".dev" / "test-logs" / request.node.name
    with ApiProcess(settings, log_dir) as api:
        yield settings, api, SignedClient(api.base_url, ADMIN_KEY, ADMIN_SECRET), worker


def submit(client: SignedClient, job_factory, job_id: str, n: int, **kw) -> None:
    reply = client.post("/api/v1/jobs", job_factory(job_id, n, callback_url=None, **kw))
    assert reply.status == 202, reply.body


def sign_in(page, base_url: str, next_path: str = "/ui/jobs") -> None:
    page.goto(f"{base_url}{next_path}")
    assert "/ui/login" in page.url  # not signed in: sent to the sign-in form
    page.get_by_label("Key id").fill(ADMIN_KEY)
    page.get_by_label("Secret").fill(ADMIN_SECRET)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{next_path}*")


def bar_value(page) -> int:
    return int(page.locator("#job-bar").get_attribute("aria-valuenow"))


# Every value the bar shows, as the page shows it (a poll from here would miss the values shown while it waits).
RECORD_BAR = """() => {
  const bar = document.getElementById("job-bar"), now = () => Number(bar.getAttribute("aria-valuenow"));
  window.__bar = [now()];
  new MutationObserver(() => { if (now() !== window.__bar.at(-1)) { window.__bar.push(now()); } })
    .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
}"""


def test_admin_watches_a_running_job_move_and_filters_the_job_list(ui_stack, job_factory, mail_sink):
    settings, api, admin, _ = ui_stack
    DOCS.mkdir(parents=True, exist_ok=True)
    total = 400
    for i in range(1, total + 1):  # every first delivery is deferred once: each batch takes a retry round
        mail_sink.fail_next(f"learner{i}@example.org", times=1)
    for i in (5, 17, 230):
        mail_sink.reject(f"learner{i}@example.org")
    # Some history for the list: finished jobs of other companies and one the worker rejects.
    for job_id, n, company in (("weekly-digest-2026-47", 12, 3), ("ui-small-job", 3, 9),
                               ("ui-other-company", 5, 8), ("course-reminder-fire-safety", 40, 4)):
        submit(admin, job_factory, job_id, n, company_id=company)
    asyncio.run(submit_job(settings, {"job_id": "onboarding-batch-12", "type": "email", "company_id": 5,
                                      "recipients": [], "template_id": "course_reminder"}))
    for job_id in ("weekly-digest-2026-47", "ui-small-job", "ui-other-company", "course-reminder-fire-safety"):
        wait_for_job(settings, job_id)
    wait_for_job(settings, "onboarding-batch-12", status="rejected")
    # The live job stops twice, at 180 and at 300 learners sent, until the test has seen the page there: the
    # bar's moves, and the mid-run screenshot, do not depend on how fast the machine is.
    before = mail_sink.count()
    mail_sink.hold_after(before + 180)

    with chromium() as browser:
        page = browser.new_page()
        sign_in(page, api.base_url)
        submit(admin, job_factory, "ui-live-job", total, company_id=7)
        wait_for(lambda: job_row(settings, "ui-live-job"), timeout=60, what="the job to be accepted")

        page.goto(f"{api.base_url}/ui/jobs")
        rows = page.locator("table.jobs tbody tr")
        assert rows.first.locator("th a").inner_text() == "ui-live-job"  # newest first
        assert rows.count() == 6

        # Filter by company: only company 8's job.
        page.get_by_label("Company", exact=True).select_option("8")
        page.get_by_role("button", name="Apply").click()
        page.wait_for_url("**company=8*")
        assert page.locator("table.jobs tbody th a").all_inner_texts() == ["ui-other-company"]
        page.get_by_role("link", name="Clear").click()

        # Job detail: the progress bar moves by itself (SSE), no reload.
        page.get_by_role("link", name="ui-live-job").click()
        page.wait_for_url("**/ui/jobs/ui-live-job")
        page.evaluate("window.__notReloaded = true")
        page.evaluate(RECORD_BAR)
        page.wait_for_selector("#live-state.on", timeout=10_000)
        wait_for(lambda: bar_value(page) >= 180, timeout=120, what="the bar at the first stop")
        assert bar_value(page) < total, "the bar passed the first stop"
        _screenshots(browser, page, api.base_url)  # the docs show the pages mid-run
        mail_sink.hold_after(before + 300)
        wait_for(lambda: bar_value(page) >= 300, timeout=120, what="the bar at the second stop")
        assert bar_value(page) < total, "the bar passed the second stop"
        mail_sink.release()
        wait_for(lambda: bar_value(page) == total, timeout=120, what="the bar at the end")
        seen = page.evaluate("window.__bar")
        assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == total, f"expected a moving bar, saw {seen}"
        assert page.evaluate("window.__notReloaded") is True
        expect(page.locator("#failed-count")).to_have_text("3", timeout=30_000)
        page.wait_for_selector("#status .badge-completed", timeout=30_000)
        assert page.locator("#sent-count").inner_text() == str(total - 3)
        history = page.locator("#history li .event").all_inner_texts()
        assert history[0] == "job.accepted" and history[-1] == "job.completed", history

        # Failed-only filter of the recipient table.
        page.get_by_role("link", name="Failed only").click()
        page.wait_for_url("**failed=1*")
        users = page.locator("table.recipients tbody tr td:first-child").all_inner_texts()
        assert users == ["5", "17", "230"]
        assert "No such user" in page.locator("table.recipients tbody").inner_text()


def _screenshots(browser, detail, base_url: str) -> None:
    """docs/ui-jobs.png (the list, in another tab) and docs/ui-job-detail.png (the live page as it is)."""
    detail.screenshot(path=str(DOCS / "ui-job-detail.png"))
    listing = browser.new_page()
    listing.goto(f"{base_url}/ui/jobs")
    listing.screenshot(path=str(DOCS / "ui-jobs.png"))
    listing.close()


def test_retry_and_cancel_from_the_page_show_their_effect_live(ui_stack, job_factory, mail_sink):
    """A retry run puts the failures back to pending and serves them again; a cancel stops a running job."""
    settings, api, admin, worker = ui_stack
    bad = [3, 8, 11, 14]
    for i in bad:
        mail_sink.reject(f"learner{i}@example.org")
    submit(admin, job_factory, "ui-retry-job", 20)
    wait_for_job(settings, "ui-retry-job")
    assert job_row(settings, "ui-retry-job")["failed"] == len(bad)
    for i in bad:  # the addresses work now: the retry can succeed
        mail_sink.fail_next(f"learner{i}@example.org", times=0)

    with chromium() as browser:
        page = browser.new_page()
        sign_in(page, api.base_url, "/ui/jobs/ui-retry-job")
        assert page.locator("#failed-count").inner_text() == str(len(bad))
        page.get_by_label("All failures").check()  # rejected addresses are permanent failures
        page.get_by_role("button", name="Retry failed").click()
        page.wait_for_url("**notice=retry_requested*")
        assert "Retry requested" in page.get_by_role("status").first.inner_text()
        # The page shows the effect live: the failed count drops to 0 and everyone is sent.
        expect(page.locator("#failed-count")).to_have_text("0", timeout=90_000)
        expect(page.locator("#sent-count")).to_have_text("20", timeout=90_000)
        expect(page.locator("#history")).to_contain_text("job.retry-requested", timeout=30_000)

        # Cancel a running job from its page: the page shows it cancelled and finished, not everyone served.
        # The sink holds the job after 20 learners until the worker has taken the cancel in: it cannot end first.
        total = 600
        mail_sink.hold_after(mail_sink.count() + 20)
        submit(admin, job_factory, "ui-cancel-job", total, company_id=9)
        wait_for(lambda: job_row(settings, "ui-cancel-job"), timeout=60, what="the job to be accepted")
        page.goto(f"{api.base_url}/ui/jobs/ui-cancel-job")
        page.get_by_label("Reason for cancelling (optional)").fill("wrong course")
        page.get_by_role("button", name="Cancel job").click()
        page.wait_for_url("**notice=cancel_requested*")
        worker.wait_for_log(f"job ui-cancel-job cancelled by ui:{ADMIN_KEY}", timeout=60)
        mail_sink.release()
        expect(page.locator("#status")).to_have_text("cancelled", timeout=60_000)
        expect(page.get_by_role("button", name="Cancel job")).to_be_disabled()
        expect(page.locator("#history")).to_contain_text(f"by ui:{ADMIN_KEY}")
        assert int(page.locator("#sent-count").inner_text()) < total

    retries = [e for e in events(settings, "jobs") if isinstance(e, JobRetryRequested)]
    assert [(e.requested_by, e.only_retryable) for e in retries] == [(f"ui:{ADMIN_KEY}", False)]


def test_company_cloud_settings_are_changed_from_the_page_with_their_history(ui_stack):
    settings, api, _, _ = ui_stack
    DOCS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        page = browser.new_page()
        sign_in(page, api.base_url, "/ui/companies/7")
        assert "Not configured yet" in page.inner_text("main")
        page.get_by_label("Enable cloud offloading for this company").check()
        page.get_by_label("Send emails through the cloud").check()
        page.get_by_label("User threshold").fill("500")
        page.get_by_label("Email provider").select_option("sendgrid")
        page.get_by_role("button", name="Save settings").click()
        page.wait_for_url("**notice=settings_*")
        rows = query(settings, "SELECT * FROM company_cloud_settings WHERE company_id = 7")
        assert [(r["cloud_enabled"], r["use_cloud_for_emails"], r["use_cloud_for_certificates"], r["user_threshold"],
                 r["email_provider"], r["changed_by"]) for r in rows] == [(True, True, False, 500, "sendgrid",
                                                                          f"ui:{ADMIN_KEY}")]
        page.reload()
        assert page.get_by_label("User threshold").input_value() == "500"
        history = page.locator("table.settings-history tbody tr")
        assert history.count() == 1 and f"ui:{ADMIN_KEY}" in history.first.inner_text()
        # A second change: the history marks what changed and who changed it.
        page.get_by_label("Issue certificates in the cloud").check()
        page.get_by_label("Certificate storage").select_option("r2")
        page.get_by_role("button", name="Save settings").click()
        page.wait_for_url("**notice=settings_*")
        expect(history).to_have_count(2)
        assert history.first.locator("td.changed").count() == 2  # certificates on, storage r2
        page.screenshot(path=str(DOCS / "ui-company-settings.png"))

        # A bad threshold changes nothing and says why.
        page.get_by_label("User threshold").fill("-4")
        page.get_by_label("User threshold").evaluate("el => el.removeAttribute('min')")
        page.get_by_role("button", name="Save settings").click()
        assert "Nothing was changed" in page.get_by_role("alert").inner_text()
        assert query(settings, "SELECT user_threshold FROM company_cloud_settings")[0]["user_threshold"] == 500
        assert page.get_by_label("User threshold").input_value() == "-4"  # what was typed stays for correction
        # A monthly budget set on the page survives a later change of another field (a change replaces the row).
        for label, value in (("Monthly cloud budget", "250"), ("User threshold", "600")):
            page.goto(f"{api.base_url}/ui/companies/7")
            page.get_by_label(label).fill(value)
            page.get_by_role("button", name="Save settings").click()
            page.wait_for_url("**notice=settings_*")
        [row] = query(settings, "SELECT monthly_budget, user_threshold FROM company_cloud_settings")
        assert (row["monthly_budget"], row["user_threshold"]) == (250.0, 600)
        assert page.get_by_label("Monthly cloud budget").input_value() == "250.0"
        # No secret ever reaches a page.
        for path in ("/ui/jobs", "/ui/companies", "/ui/companies/7"):
            page.goto(f"{api.base_url}{path}")
            html = page.content()
            assert ADMIN_SECRET not in html and K7_SECRET not in html


def test_ui_refuses_strangers_wrong_keys_and_forged_posts(ui_stack, job_factory):
    settings, api, admin, _ = ui_stack
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{api.base_url}/ui/jobs")
        assert "/ui/login" in page.url
        # A company key is not an admin key.
        page.get_by_label("Key id").fill("k7")
        page.get_by_label("Secret").fill(K7_SECRET)
        page.get_by_role("button", name="Sign in").click()
        assert "Sign-in failed" in page.get_by_role("alert").inner_text()
        page.get_by_label("Key id").fill(ADMIN_KEY)
        page.get_by_label("Secret").fill("wrong-secret-0123456789")
        page.get_by_role("button", name="Sign in").click()
        assert "Sign-in failed" in page.get_by_role("alert").inner_text()
        sign_in(page, api.base_url)
        cookie = next(c for c in browser.cookies() if c["name"] == "offload_ui")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and ADMIN_SECRET not in cookie["value"]

        submit(admin, job_factory, "ui-forged", 3)
        wait_for(lambda: job_row(settings, "ui-forged"), timeout=60, what="the job")
        # A POST without the CSRF token is refused even with the session cookie.
        reply = page.request.post(f"{api.base_url}/ui/jobs/ui-forged/cancel", form={"reason": "x"},
                                  max_redirects=0)
        assert reply.status == 403
        # The API itself still needs signatures; the session cookie does not open it.
        assert page.request.get(f"{api.base_url}/api/v1/jobs").status == 401
        # Signing out ends the session.
        page.goto(f"{api.base_url}/ui/jobs")
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url("**/ui/login*")
        page.goto(f"{api.base_url}/ui/jobs")
        assert "/ui/login" in page.url

    # /metrics (Prometheus text): the worker's lag shows once Faust has committed offsets (every few seconds).
    worker_lag = f'offload_consumer_lag{{agent="worker",group="{settings.app_id}",topic="{settings.topic("jobs")}"}}'

    def scrape() -> str | None:
        text = admin.get("/metrics").raw.decode()
        return text if worker_lag in text else None

    wait_for_job(settings, "ui-forged")  # completed in the read model before the counts below are read
    metrics = wait_for(scrape, timeout=30, what="the worker's consumer lag in /metrics")
    assert 'offload_jobs{status="completed",type="email"} 1' in metrics
    # prometheus_client writes labels in sorted order (their order carries no meaning in the format).
    assert 'offload_recipients_total{outcome="sent",provider="smtp",route="local"} 3' in metrics
    assert f'offload_consumer_lag{{agent="projector",group="projector:read-models",topic="{settings.topic("outcomes")}"}} 0' \
        in metrics
    assert 'offload_metrics_source_up{source="kafka"} 1' in metrics



def test_the_job_list_pages_through_many_jobs_newest_first_and_filters_by_status(ui_stack, job_factory):
    settings, api, admin, _ = ui_stack
    for i in range(30):
        submit(admin, job_factory, f"page-job-{i:02d}", 1, company_id=11)
        time.sleep(0.02)  # distinct acceptance times: "newest first" is well defined
    wait_for(lambda: len(query(settings, "SELECT 1 FROM jobs WHERE status = 'completed'")) == 30, timeout=90,
             what="30 completed jobs")
    with chromium() as browser:
        page = browser.new_page()
        sign_in(page, api.base_url, "/ui/jobs?company=11")
        ids = page.locator("table.jobs tbody th a").all_inner_texts()
        assert len(ids) == 25 and "Page 1 of 2" in page.inner_text("nav.pager")
        page.get_by_role("link", name="Older ›").click()
        ids += page.locator("table.jobs tbody th a").all_inner_texts()
        newest_first = [r["job_id"] for r in query(
            settings, "SELECT job_id FROM jobs ORDER BY timecreated DESC NULLS LAST, job_id DESC")]
        assert ids == newest_first
        assert len(set(ids)) == 30
        page.goto(f"{api.base_url}/ui/jobs?status=running")
        assert "No jobs match this filter" in page.inner_text("table.jobs")
