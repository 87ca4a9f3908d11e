"""Company templates through the real API, worker, projector and SMTP sink: a company's own version is used for
its jobs only, a bad template is refused with every problem and nothing published, a running job keeps the
version it was accepted with, inline content is rendered and checked the same way, and replay rebuilds the
templates read model."""

from __future__ import annotations

import asyncio
import json

import pytest

from offload.client import submit_job
from offload.replay import replay
from schemas.events import JobAccepted, JobRejected, TemplatePublished, TemplateRetired
from tests.support.api import ApiServer, SignedClient, api_keys, without_api_keys
from tests.support.observe import events, query, wait_for, wait_for_job, wait_for_projector
from tests.support.templates import parts_of, subject_of, wait_for_worker_template

pytestmark = pytest.mark.integration

K7, K8, OPS = "k7-secret-0123456789abc", "k8-secret-0123456789abc", "ops-secret-0123456789abc"
BRANDED = {
    "subject": "Acme Academy: finish {{ course_name }}",
    "html": "<p>Hello {{ firstname }}, Acme reminds you of <b>{{ course_name }}</b>.</p>",
    "text": "Hello {{ firstname }}, Acme reminds you of {{ course_name }}.",
    "variables": ["course_name"],
    "sample_data": {"course_name": "Ladders <b>& you</b>"},
}
TEMPLATES = "/api/v1/companies/{}/templates/course_reminder"


@pytest.fixture
def api_settings(settings_factory, mail_sink):
    return settings_factory(api_keys=api_keys(k7=(K7, 7), k8=(K8, 8), ops=(OPS, None)), smtp_port=mail_sink.port,
                            job_batch_size=5)


def test_a_company_template_is_used_for_that_company_only_and_a_bad_one_is_refused_whole(
    api_settings, topics_for, processes, job_factory, mail_sink
):
    settings = api_settings
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    processes("projector", without_api_keys(settings))
    with ApiServer(settings) as server:
        k7, k8 = SignedClient(server.base_url, "k7", K7), SignedClient(server.base_url, "k8", K8)
        ops = SignedClient(server.base_url, "ops", OPS)

        # Every problem at once, and nothing published.
        bad = k7.put(TEMPLATES.format(7), {
            "subject": "Hi {{ firstname }", "html": "<p>{{ course_name|safe }} {{ secret }}</p>" + "x" * 300_000,
            "text": "{% autoescape false %}{{ course_name }}{% endautoescape %}", "variables": ["course_name"]})
        assert bad.status == 422, bad.body
        found = {(p["code"], p["field"]) for p in bad.body["error"]["problems"]}
        assert found == {("template_too_large", "(root)"), ("template_invalid", "subject"),
                         ("template_unsafe", "html"), ("template_unsafe", "text"),
                         ("undefined_variable", "variables")}, found
        undefined = next(p for p in bad.body["error"]["problems"] if p["code"] == "undefined_variable")
        assert undefined["missing"] == ["secret"]
        # A company key publishes for its own company only; another company's looks like no company at all.
        assert k8.put(TEMPLATES.format(7), BRANDED).status == 404
        assert k8.get("/api/v1/companies/7/templates").status == 404

        preview = k7.post(TEMPLATES.format(7) + "/preview", BRANDED)
        assert preview.status == 200 and preview.body["valid"] is True
        assert preview.body["rendered"]["subject"] == "Acme Academy: finish Ladders <b>& you</b>"
        assert "<b>Ladders &lt;b&gt;&amp; you&lt;/b&gt;</b>" in preview.body["rendered"]["html"]  # escaped

        published = k7.put(TEMPLATES.format(7), BRANDED)
        assert (published.status, published.body["version"], published.body["variables"]) == (
            202, 1, ["course_name"])
        assert [type(e) for e in events(settings, "templates")] == [TemplatePublished]
        wait_for_worker_template(settings, 7, "course_reminder", version=1)

        asyncio.run(submit_job(settings, job_factory("tpl-own", 3, company_id=7)))
        asyncio.run(submit_job(settings, job_factory("tpl-builtin", 3, company_id=8, start=101)))
        wait_for_job(settings, "tpl-own")
        wait_for_job(settings, "tpl-builtin")
        assert subject_of(mail_sink, "learner1@example.org") == "Acme Academy: finish Fire Safety 101"
        assert "Hello First1, Acme reminds you" in parts_of(mail_sink, "learner1@example.org")["text/plain"]
        assert subject_of(mail_sink, "learner101@example.org") == "Reminder: Fire Safety 101 is due 2026-12-31"
        accepted = {e.job_id: e for e in events(settings, "jobs") if isinstance(e, JobAccepted)}
        assert (accepted["tpl-own"].template_source, accepted["tpl-own"].template_version) == ("company", 1)
        assert (accepted["tpl-builtin"].template_source, accepted["tpl-builtin"].template_version) == (
            "builtin", None)

        # The read model and the API's list/get.
        listed = k7.get("/api/v1/companies/7/templates").body
        assert [(t["template_id"], t["latest_version"], t["retired"]) for t in listed["templates"]] == [
            ("course_reminder", 1, False)]
        assert "course_reminder" in listed["builtin"]
        got = ops.get(TEMPLATES.format(7)).body
        assert (got["source"], got["version"], got["subject"]) == ("company", 1, BRANDED["subject"])
        assert k7.get("/api/v1/jobs/tpl-own").body["template"] == {"source": "company", "version": 1}
        assert ops.get(TEMPLATES.format(8)).body["source"] == "builtin"

        # Retired: the company's jobs use the built-in template again.
        assert k7.request("DELETE", TEMPLATES.format(7), {"reason": "rebranding"}).status == 202
        wait_for_worker_template(settings, 7, "course_reminder", version=1, retired=True)
        asyncio.run(submit_job(settings, job_factory("tpl-after-retire", 1, company_id=7, start=201)))
        wait_for_job(settings, "tpl-after-retire")
        assert subject_of(mail_sink, "learner201@example.org") == "Reminder: Fire Safety 101 is due 2026-12-31"
        wait_for_projector(settings)
        assert query(settings, "SELECT retired, retire_reason FROM email_templates") == [
            {"retired": True, "retire_reason": "rebranding"}]


def test_a_running_job_keeps_its_version_and_inline_content_is_rendered_and_checked(
    api_settings, topics_for, processes, job_factory, mail_sink
):
    settings = api_settings
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    projector = processes("projector", without_api_keys(settings))
    with ApiServer(settings) as server:
        k7 = SignedClient(server.base_url, "k7", K7)
        assert k7.put(TEMPLATES.format(7), BRANDED).status == 202
        wait_for_worker_template(settings, 7, "course_reminder", version=1)

        # Version 2 is published while the job's first batch is held at the sink: every batch still uses v1.
        mail_sink.hold_after(2)
        mail_sink.fail_next("learner12@example.org", code=550, times=1)  # fails once: served by the retry below
        asyncio.run(submit_job(settings, job_factory("tpl-pinned", 12, company_id=7)))
        wait_for(lambda: mail_sink.count() >= 2, what="the job to start sending")
        second = k7.put(TEMPLATES.format(7), {**BRANDED, "subject": "Acme v2: {{ course_name }}"})
        assert (second.status, second.body["version"]) == (202, 2)
        wait_for_worker_template(settings, 7, "course_reminder", version=2)
        mail_sink.release()
        wait_for_job(settings, "tpl-pinned")
        asyncio.run(submit_job(settings, job_factory("tpl-later", 1, company_id=7, start=301)))
        wait_for_job(settings, "tpl-later")
        assert {subject_of(mail_sink, f"learner{i}@example.org") for i in range(1, 12)} == {
            "Acme Academy: finish Fire Safety 101"}
        assert subject_of(mail_sink, "learner301@example.org") == "Acme v2: Fire Safety 101"
        # A retry run after v2 was published serves the failed learner with the job's own version, v1.
        retried = k7.post("/api/v1/jobs/tpl-pinned/retry", {"only_retryable": False})
        assert retried.status == 202, retried.body
        wait_for_job(settings, "tpl-pinned", run=1)
        assert subject_of(mail_sink, "learner12@example.org") == "Acme Academy: finish Fire Safety 101"
        batches = [e for e in events(settings, "batches") if e.job_id == "tpl-pinned"]
        assert sorted((b.run, b.batch_no) for b in batches) == [(0, 0), (0, 1), (0, 2), (1, 0)]
        assert {(b.template_source, b.template_version) for b in batches} == {("company", 1)}

        # Inline content: rendered per learner, escaped like a template; checked at the API and by the worker.
        inline = {"subject": "Forum digest for {{ firstname }}", "text": "Dear {{ firstname }}, {{ count }} posts.",
                  "html": "<p>Dear {{ firstname }}, <i>{{ count }}</i> posts.</p>"}
        job = job_factory("tpl-inline", 2, company_id=7, start=401, template_id="forum_digest",
                          template_data={"count": "<3>"}, content=inline, callback_url=None)
        job["recipients"][0]["firstname"] = "<Eve>"
        assert k7.post("/api/v1/jobs", job).status == 202
        wait_for_job(settings, "tpl-inline")
        assert subject_of(mail_sink, "learner402@example.org") == "Forum digest for First402"
        html = parts_of(mail_sink, "learner401@example.org")["text/html"]
        assert "Dear &lt;Eve&gt;, <i>&lt;3&gt;</i> posts." in html
        assert parts_of(mail_sink, "learner401@example.org")["text/plain"].startswith("Dear <Eve>, <3> posts.")

        unsafe = k7.post("/api/v1/jobs", {**job, "job_id": "tpl-inline-bad", "content": {
            "subject": "{{ firstname }", "html": "{{ count|safe }}" + "y" * 300_000, "text": ""}})
        assert unsafe.status == 422
        assert {(p["code"], p["field"]) for p in unsafe.body["error"]["problems"]} == {
            ("template_too_large", "content"), ("template_invalid", "content.subject"),
            ("template_unsafe", "content.html")}
        missing = k7.post("/api/v1/jobs", {**job, "job_id": "tpl-inline-missing", "template_data": {}})
        assert missing.status == 422 and missing.body["error"]["problems"][0]["missing"] == ["count"]
        # Straight to Kafka, past the API: the route agent refuses it the same way.
        asyncio.run(submit_job(settings, {**job, "job_id": "tpl-inline-kafka",
                                          "content": {"subject": "x", "html": "{{ count|safe }}"}}))
        rejected = wait_for_job(settings, "tpl-inline-kafka", status="rejected")
        assert [p["code"] for p in rejected["problems"]] == ["template_unsafe"]
        assert any(isinstance(e, JobRejected) and e.job_id == "tpl-inline-kafka" for e in events(settings, "jobs"))

        # Replay rebuilds the templates read model (and which template each job used) row for row.
        assert k7.request("DELETE", TEMPLATES.format(7)).status == 202
        wait_for(lambda: len([e for e in events(settings, "templates") if isinstance(e, TemplateRetired)]) == 1)
        wait_for_projector(settings)
        projector.stop()
    replayed = f"{settings.projection_schema}_replay"
    asyncio.run(replay(settings, replayed))
    for table, order in (("email_template_versions", "version"), ("email_templates", "template_id"),
                         ("jobs", "job_id")):
        statement = f"SELECT * FROM {table} ORDER BY {order}"
        live = [{k: v for k, v in r.items() if k != "updated_at" or table != "jobs"}
                for r in query(settings, statement)]
        rebuilt = [{k: v for k, v in r.items() if k != "updated_at" or table != "jobs"}
                   for r in query(settings.model_copy(update={"projection_schema": replayed}), statement)]
        differences = [(a.get("job_id", a), {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)})
                       for a, b in zip(live, rebuilt, strict=False) if a != b]
        assert live and rebuilt == live, (table, differences)
    heads = query(settings, "SELECT latest_version, retired FROM email_templates")
    assert heads == [{"latest_version": 2, "retired": True}]
    assert query(settings, "SELECT template_source, template_version FROM jobs WHERE job_id = 'tpl-pinned'") == [
        {"template_source": "company", "template_version": 1}]


def test_moodle_publishes_a_template_and_sends_its_own_message_with_the_php_client(
    api_settings, topics_for, processes, job_factory, mail_sink, tmp_path
):
    from tests.integration.test_api_php_client import php

    settings = api_settings
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    processes("projector", without_api_keys(settings))
    files = {"draft": BRANDED, "bad": {**BRANDED, "html": "{{ course_name|safe }"},
             "job": job_factory("php-tpl", 1, company_id=7, callback_url=None),
             "inline-job": job_factory("php-inline", 1, company_id=7, start=2, callback_url=None,
                                       template_id="moodle_message"),
             "content": {"subject": "Composed in Moodle for {{ firstname }}", "text": "Hello {{ firstname }}"}}
    for name, value in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(value))
    with ApiServer(settings) as server:
        base, path = server.base_url, lambda name: str(tmp_path / f"{name}.json")
        preview = php(base, "k7", K7, "preview-template", "7", "course_reminder", path("draft"))
        assert preview["body"]["rendered"]["subject"] == "Acme Academy: finish Ladders <b>& you</b>"
        bad = php(base, "k7", K7, "publish-template", "7", "course_reminder", path("bad"))
        assert bad["status"] == 422 and [p["field"] for p in bad["body"]["error"]["problems"]] == ["html"]
        good = php(base, "k7", K7, "publish-template", "7", "course_reminder", path("draft"))
        assert (good["status"], good["body"]["version"]) == (202, 1)
        assert php(base, "k7", K7, "publish-template", "8", "course_reminder", path("draft"))["status"] == 404
        wait_for_worker_template(settings, 7, "course_reminder", version=1)
        assert php(base, "k7", K7, "submit", path("job"))["status"] == 202
        assert php(base, "k7", K7, "submit", path("inline-job"), path("content"))["status"] == 202
        wait_for_job(settings, "php-tpl")
        wait_for_job(settings, "php-inline")
    assert subject_of(mail_sink, "learner1@example.org") == "Acme Academy: finish Fire Safety 101"
    assert subject_of(mail_sink, "learner2@example.org") == "Composed in Moodle for First2"
    assert [type(e) for e in events(settings, "templates")] == [TemplatePublished]
