"""A worker stopped while its batch waits for an unreachable local relay (an outage is waited out for up to
OFFLOAD_RELAY_OUTAGE_MAX_SECONDS, an hour by default): it stops at once, giving the batch up unacked, and the
worker that serves the batch next sends each learner once. Before, the stop waited for the batch until the relay
came back or the hour ran out (Faust waits for every record taken to be acked), and a rebalance stalled alike.
The same for a certificate batch whose mails (the link to each certificate) wait for the relay."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from config.settings import Settings
from devtools.devmail import DevMailSink
from devtools.processes import ServiceProcess
from offload.client import submit_job
from schemas.events import BatchWaitingForDependency
from tests.support.email import closed_port, silent_port
from tests.support.observe import events, job_row, query, wait_for_job

pytestmark = pytest.mark.integration


def stops_giving_up(worker: ServiceProcess, batch: str, mail_sink: DevMailSink) -> None:
    """SIGTERM, and the worker stops by itself, having given ``batch`` up unacked; nothing was sent."""
    assert worker.terminate(timeout=90) >= 0
    text = worker.log_text()
    assert re.search(rf"batch {re.escape(batch)} given up for now, unacked, as the worker stops or rebalances while "
                     r"its sends wait \(smtp unavailable: ", text), text[-3000:]
    assert "wait_empty: Waiting for tasks" not in text and mail_sink.count() == 0


def given_up_then_sent_once(relay_down: Settings, job_id: str, topics_for, processes, job_factory,
                            mail_sink: DevMailSink) -> str:
    """A 30-learner email job on a worker that cannot reach the relay of ``relay_down``: stopped, the worker gives
    the batch up; a worker of the same group that reaches the relay sends each learner once. The first one's log."""
    topics_for(relay_down)
    worker = processes("worker", relay_down)
    processes("projector", relay_down)
    asyncio.run(submit_job(relay_down, job_factory(job_id, 30)))
    worker.wait_for_log("wait for it without spending attempts", timeout=90)
    stops_giving_up(worker, f"{job_id}:0:0", mail_sink)

    processes("worker", relay_down.model_copy(update={"smtp_port": mail_sink.port}))
    row = wait_for_job(relay_down, job_id, timeout=120)
    assert (row["succeeded"], row["failed"]) == (30, 0), row
    assert mail_sink.recipient_counts() == {f"learner{i}@example.org": 1 for i in range(1, 31)}
    return worker.log_text()


def test_a_worker_stopped_while_its_batch_waits_for_the_relay_stops_and_the_next_sends_each_learner_once(
    settings_factory, topics_for, processes, job_factory, mail_sink
) -> None:
    relay_down = settings_factory(smtp_port=closed_port(), relay_outage_max_seconds=3600)
    given_up_then_sent_once(relay_down, "relay-stop", topics_for, processes, job_factory, mail_sink)
    # While it waited, the job's page said why (its pacing, from the batch's BatchWaitingForDependency, said once
    # though both of the batch's chunks waited); then it completed.
    waits = [e for e in events(relay_down, "jobs") if isinstance(e, BatchWaitingForDependency)]
    assert [(e.batch_no, e.dependency) for e in waits] == [(0, "smtp-relay")], waits
    assert re.fullmatch(r"smtp unavailable: smtp 127\.0\.0\.1:\d+: .*", waits[0].reason), waits[0].reason
    assert not (job_row(relay_down, "relay-stop")["pacing"] or "").startswith("waiting for")


def test_a_worker_stopped_while_its_certificate_mails_wait_for_the_relay_stops_and_the_next_issues_each_once(
    settings_factory, topics_for, processes, job_factory, mail_sink, tmp_path: Path
) -> None:
    relay_down = settings_factory(smtp_port=closed_port(), relay_outage_max_seconds=3600,
                                  certificate_storage_root=tmp_path / "certs", certificate_render_processes=1)
    topics_for(relay_down)
    worker = processes("worker", relay_down)
    processes("projector", relay_down)
    job = job_factory("cert-relay-stop", 20, job_type="certificate", template_id="course_completion",
                      template_data={"course_name": "Fire Safety 101", "completion_date": "2026-11-20"})
    job["notify_template_id"] = "certificate_ready"
    asyncio.run(submit_job(relay_down, job))
    worker.wait_for_log("wait for it without spending attempts", timeout=90)

    stops_giving_up(worker, "cert-relay-stop:0:0", mail_sink)
    stored = sorted(path.relative_to(tmp_path) for path in (tmp_path / "certs").rglob("*.pdf"))
    assert len(stored) == 20  # stored before their mails waited; served again, the same keys are stored again

    processes("worker", relay_down.model_copy(update={"smtp_port": mail_sink.port}))
    row = wait_for_job(relay_down, "cert-relay-stop", timeout=120)
    assert (row["succeeded"], row["failed"]) == (20, 0), row
    assert mail_sink.recipient_counts() == {f"learner{i}@example.org": 1 for i in range(1, 21)}
    assert sorted(path.relative_to(tmp_path) for path in (tmp_path / "certs").rglob("*.pdf")) == stored
    rows = query(relay_down, "SELECT status, count(*) AS n FROM job_recipients WHERE job_id = 'cert-relay-stop' "
                             "GROUP BY status")
    assert [(r["status"], r["n"]) for r in rows] == [("issued", 20)]
    waits = [e for e in events(relay_down, "jobs") if isinstance(e, BatchWaitingForDependency)]
    assert [(e.batch_no, e.dependency) for e in waits] == [(0, "smtp-relay")], waits  # once for its 20 mails


def test_a_worker_stopped_while_its_batch_tries_a_relay_that_does_not_answer_stops_and_the_next_sends_each_once(
    settings_factory, topics_for, processes, job_factory, mail_sink
) -> None:
    """A relay behind a firewall that drops: each round spends the connect timeout trying to open a session, so
    the batch's chunks are nearly never all asleep between rounds at once. With no session open, none of them has
    anything on its way, so the stop need not wait for that."""
    with silent_port() as port:
        silent = settings_factory(smtp_port=port, smtp_timeout=3.0, retry_base_delay=0.1, retry_max_delay=0.2,
                                  relay_outage_max_seconds=3600)
        log = given_up_then_sent_once(silent, "relay-silent", topics_for, processes, job_factory, mail_sink)
    assert "imed out" in log  # the relay's silence, not a refusal
