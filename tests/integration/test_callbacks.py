"""Signed callbacks to a real "Moodle" on loopback, through the real worker: retried while Moodle is down,
kept across a worker crash, recorded as CallbackFailed/CallbackDelivered and projected into Postgres."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from config.settings import Settings
from offload.client import submit_job
from projections import projector
from schemas.events import CallbackDelivered, CallbackFailed
from tests.support.moodle_php import php_reads_callback
from tests.support.moodle_receiver import MoodleReceiver
from tests.support.observe import events, query, wait_for

pytestmark = pytest.mark.integration

KEY_ID, SECRET = "moodle-7-cb", "callback-k7-secret-0123456789abcdef"


def project(settings: Settings) -> None:
    """Run the real projector until it has caught up."""
    asyncio.run(projector.Projector(settings).run(until_caught_up=True))


def php_verifies(received, tmp_path: Path) -> bool:
    return php_reads_callback("verify-callback", received, {KEY_ID: SECRET}, tmp_path)["valid"]


def test_callbacks_are_signed_retried_while_moodle_is_down_and_survive_a_worker_crash(
    settings_factory, topics_for, processes, job_factory, mail_sink, tmp_path
):
    settings = settings_factory(
        smtp_port=mail_sink.port, job_batch_size=25,
        api_allow_private_callbacks=True,  # the receiver is on loopback
        callback_keys=json.dumps({KEY_ID: {"secret": SECRET, "company_id": 7}}),
        callback_retry_base=4.0, callback_retry_max=8.0, callback_check_interval=0.2,
    )
    topics_for(settings)
    with MoodleReceiver({KEY_ID: SECRET}, down_for=3) as moodle:
        worker = processes("worker", settings)
        callback_url = moodle.url("/local/offload/callback.php?jobid=cb-job-1&sesskey=a%2Fb")
        asyncio.run(submit_job(settings, job_factory("cb-job-1", 100, callback_url=callback_url)))

        # Moodle is down: the first attempt is answered 503 and recorded; then the worker crashes.
        wait_for(lambda: moodle.received, timeout=90, what="the first callback attempt")
        wait_for(lambda: any(isinstance(e, CallbackFailed) and e.event == "started" and e.attempt == 1
                             for e in events(settings, "callbacks")), timeout=60, what="the failed attempt recorded")
        worker.kill()
        crashed_at = time.time()
        attempts_before_crash = len(moodle.received)
        assert attempts_before_crash < 3, "Moodle came back before the crash; make the retry slower"

        processes("worker", settings)

        def all_delivered():
            bodies = [r.json for r in moodle.delivered()]
            return bodies if bodies and bodies[-1]["event"] == "completed" else None

        delivered = wait_for(all_delivered, timeout=120, what="the completed callback")

    # Every request was signed; the three 503s were the start callback, retried, and it was delivered after.
    assert all(r.valid for r in moodle.received)
    assert [r.answered for r in moodle.received[:3]] == [503, 503, 503]
    assert {r.json["event"] for r in moodle.received[:3]} == {"started"}
    assert any(r.at > crashed_at for r in moodle.received[:4]), "the pending callback was lost in the crash"

    # In order: started, progress milestones (rising), completed with the job's totals.
    names = [b["event"] for b in delivered]
    assert names[0] == "started" and names[-1] == "completed" and set(names[1:-1]) <= {"progress"}
    milestones = [b["milestone"] for b in delivered if b["event"] == "progress"]
    assert milestones and milestones == sorted(set(milestones)) and set(milestones) <= {25, 50, 75}
    assert delivered[0]["percent"] == 0 and delivered[0]["totals"]["total"] == 100
    assert delivered[-1]["totals"] == {"total": 100, "succeeded": 100, "failed": 0, "suppressed": 0, "pending": 0}
    assert delivered[-1]["percent"] == 100 and delivered[-1]["status"] == "completed"
    assert all(b["job_id"] == "cb-job-1" and b["company_id"] == 7 for b in delivered)
    assert {r.headers["X-Offload-Key-Id"] for r in moodle.received} == {KEY_ID}

    # Moodle's own PHP verifier accepts a real callback, and refuses it tampered.
    final = moodle.delivered()[-1]
    assert php_verifies(final, tmp_path)
    tampered = type(final)(final.path, final.headers, final.body.replace(b'"failed":0', b'"failed":1'),
                           True, 200, final.at)
    assert not php_verifies(tampered, tmp_path)

    # Each attempt is an event: the start callback failed (503, with its next attempt) before it was delivered,
    # and its attempt count went on across the crash instead of starting again.
    # Recorded after Moodle's answer: the last one can reach the receiver before its event reaches the log.
    def recorded_through_completed() -> list | None:
        found = [e for e in events(settings, "callbacks") if isinstance(e, CallbackDelivered | CallbackFailed)]
        done = any(isinstance(e, CallbackDelivered) and e.callback_id == "cb-job-1:0:completed" for e in found)
        return found if done else None

    recorded = wait_for(recorded_through_completed, timeout=60, what="the completed callback's CallbackDelivered")
    started = [e for e in recorded if e.callback_id == "cb-job-1:0:started"]
    failed = [e for e in started if isinstance(e, CallbackFailed)]
    assert failed and all(e.status == 503 and e.next_attempt_at is not None for e in failed)
    assert 1 in {e.attempt for e in failed} and max(e.attempt for e in failed) >= 2
    (ok,) = {e.attempt: e for e in started if isinstance(e, CallbackDelivered)}.values()
    assert ok.status == 200 and ok.attempt > max(e.attempt for e in failed)
    assert {e.callback_id for e in recorded if isinstance(e, CallbackDelivered)} >= {
        "cb-job-1:0:started", "cb-job-1:0:completed"}

    # The read model shows every callback delivered, the start one after several attempts.
    project(settings)
    rows = {r["callback_id"]: r for r in query(settings, "SELECT * FROM callbacks WHERE job_id = %s", ("cb-job-1",))}
    assert rows["cb-job-1:0:started"]["status"] == "delivered"
    assert rows["cb-job-1:0:started"]["attempt"] == ok.attempt
    assert rows["cb-job-1:0:started"]["delivered_at"] is not None
    assert rows["cb-job-1:0:completed"]["status"] == "delivered"
    assert all(r["status"] == "delivered" for r in rows.values())
    assert len(rows) == len({b["callback_id"] for b in delivered})
