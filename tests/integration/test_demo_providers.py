"""`offload demo --provider sendgrid|mailgun` on the shared stack: the demo job goes through the provider's local
test server (from devtools, as an installed wheel runs it), with its progress shown, every learner once."""

from __future__ import annotations

import pytest

from devtools.demo import run_job_demo
from tests.support.observe import query

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun"])
def test_the_demo_job_runs_through_the_providers_test_server_with_visible_progress(
    settings_factory, mail_sink, tmp_path, capsys, provider
):
    settings = settings_factory(smtp_port=mail_sink.port)
    code = run_job_demo(settings, tmp_path, recipients=120, provider=provider)
    out = capsys.readouterr().out

    assert code == 0, out
    assert f"company 7 sends through the {provider} API (a local test server at http://127.0.0.1:" in out
    assert f"cloud via {provider}" in out  # the route, as the progress view prints it
    assert "[" in out and "121/121 sent 120 failed 1" in out  # the bar; the unusable address fails alone
    assert f"the {provider} test server accepted" in out and "120 messages for 120 learners (each once)" in out
    assert mail_sink.count() == 0  # nothing fell back to the relay
    # Each process's own health, asked at the end: ready, with the provider's account among the worker's checks.
    worker = next(line for line in out.splitlines() if line.startswith("== worker health: "))
    assert worker.startswith("== worker health: ready (kafka up, ") and f"provider {provider}:" in worker, out
    assert "== projector health: ready (kafka up, postgres up)" in out, out
    (row,) = query(settings, "SELECT route, provider, fell_back FROM jobs")
    assert (row["route"], row["provider"], row["fell_back"]) == ("cloud", provider, False)
