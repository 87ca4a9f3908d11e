"""The admin page for company templates in a real Chromium: preview a draft, see every problem of a bad one
with nothing published, publish a good one and see it used for the company's next job."""

from __future__ import annotations

import pytest

from schemas.events import TemplatePublished
from tests.integration.test_ui_browser import DOCS, sign_in, submit, ui_stack  # noqa: F401 - ui_stack: fixture
from tests.support.browser import chromium
from tests.support.observe import events, wait_for, wait_for_job
from tests.support.templates import subject_of, wait_for_worker_template

pytestmark = pytest.mark.integration


def test_an_admin_previews_refuses_and_publishes_a_company_template(ui_stack, job_factory, mail_sink):  # noqa: F811
    settings, api, admin, _ = ui_stack
    with chromium() as browser:
        page = browser.new_page()
        sign_in(page, api.base_url, "/ui/companies/7/templates")
        page.get_by_role("link", name="course_reminder").click()  # start from the built-in template
        page.wait_for_url("**edit=course_reminder*")
        assert page.get_by_label("Subject").input_value() == "Reminder: {{ course_name }} is due {{ due_date }}"

        page.get_by_label("Subject").fill("Acme: {{ course_name } by {{ due_date }}")
        page.get_by_label("HTML", exact=True).fill("<p>Hi {{ firstname }}, {{ course_name|safe }}</p>")
        page.get_by_role("button", name="Publish").click()
        alert = page.get_by_role("alert")
        assert "Nothing was published" in alert.inner_text()
        assert "syntax error" in alert.inner_text() and "|safe" in alert.inner_text()

        page.get_by_label("Subject").fill("Acme: {{ course_name }} by {{ due_date }}")
        page.get_by_label("HTML", exact=True).fill("<p>Hi {{ firstname }}, finish <b>{{ course_name }}</b>.</p>")
        page.get_by_label("Sample data (JSON)").fill('{"course_name": "Ladders", "due_date": "Friday", '
                                                    '"course_url": "https://c.example"}')
        page.get_by_role("button", name="Preview").click()
        assert page.locator(".preview-subject").inner_text() == "Acme: Ladders by Friday"
        assert "<b>Ladders</b>" in page.locator(".preview-html").inner_text()  # shown as source, not rendered
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / "ui-company-templates.png"), full_page=True)

        page.get_by_role("button", name="Publish").click()
        page.wait_for_url("**notice=template_published*")

        def listed() -> bool:
            page.reload()
            return "in use" in page.locator("table.templates tbody").inner_text()

        wait_for(listed, what="the published template in the list")
    (published,) = events(settings, "templates")  # only the good one: the refused draft was never published
    assert isinstance(published, TemplatePublished) and published.published_by == "ui:ops"
    wait_for_worker_template(settings, 7, "course_reminder", version=1)
    submit(admin, job_factory, "ui-template-job", 1, company_id=7)
    wait_for_job(settings, "ui-template-job")
    assert subject_of(mail_sink, "learner1@example.org") == "Acme: Fire Safety 101 by 2026-12-31"
