"""The local SMTP relay gone in the middle of a job, and Moodle's callback endpoint gone for a while: learners
wait and are served once the relay is back without their attempts being spent on the outage, and every callback
reaches Moodle, in order, after its endpoint comes back."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest

from offload.client import submit_job
from schemas.events import CallbackDelivered, CallbackFailed, RecipientFailed, RecipientSent
from tests.support.email import closed_port
from tests.support.faults import MoodleAfterOutage
from tests.support.observe import events, wait_for, wait_for_job
from tests.support.process_health import When

pytestmark = [pytest.mark.faults, pytest.mark.integration]

KEY_ID, SECRET = "moodle-7-outage", "callback-outage-secret-0123456789abcdef"


def test_learners_wait_for_a_relay_outage_without_spending_attempts(settings_factory, topics_for, processes,
                                                                    job_factory, slow_sink):
    n = 600
    # Three attempts with back-off capped at 0.5 s: without waiting out the outage, every learner still open
    # would fail within ~2 s of the relay going away.
    settings = settings_factory(smtp_port=slow_sink.port, job_batch_size=50, smtp_connections=2, max_attempts=3,
                                relay_outage_max_seconds=600, stall_redispatch_seconds=120)
    topics_for(settings)
    worker = processes("worker", settings)
    processes("projector", settings)
    asyncio.run(submit_job(settings, job_factory("relay-outage", n)))

    wait_for(lambda: slow_sink.count() >= n // 4, timeout=120, interval=0.02, what="a quarter of the job sent")
    slow_sink.go_away()
    went_away, sent_before = time.monotonic(), slow_sink.count()
    assert sent_before < n, "the job finished before the relay went away; make it longer"
    time.sleep(15)
    # Nobody failed during the outage: they are waiting.
    assert not [e for e in events(settings, "outcomes") if isinstance(e, RecipientFailed)]
    slow_sink.come_back()
    outage = time.monotonic() - went_away

    job = wait_for_job(settings, "relay-outage", timeout=180)
    assert (job["succeeded"], job["failed"]) == (n, 0)
    counts = slow_sink.recipient_counts()
    assert all(counts.get(f"learner{i}@example.org", 0) >= 1 for i in range(1, n + 1))
    duplicates = sum(c - 1 for c in counts.values())
    # At most the transactions cut off by the outage: each session's window of them.
    assert duplicates <= settings.smtp_connections * settings.smtp_window
    sent = [e for e in events(settings, "outcomes") if isinstance(e, RecipientSent)]
    assert Counter(e.userid for e in sent) == Counter(range(1, n + 1))
    attempts = Counter(e.attempts for e in sent)
    assert max(attempts) <= 2, attempts  # the outage cost no one their attempts (2: cut off mid-transaction)
    assert "wait for it without spending attempts" in worker.log_text()
    print("RELAY OUTAGE " + json.dumps({"learners": n, "outage_s": round(outage, 1), "sent_before": sent_before,
                                        "duplicates": duplicates, "attempts": dict(attempts)}))


def test_every_callback_reaches_moodle_after_its_endpoint_was_down(settings_factory, topics_for, processes,
                                                                   job_factory, mail_sink):
    # 10 minutes in production; shortened here to 30 s with a backoff scaled down to match.
    outage = 30.0
    port, health_port = closed_port(), closed_port()
    settings = settings_factory(
        smtp_port=mail_sink.port, job_batch_size=25, api_allow_private_callbacks=True, health_port=health_port,
        callback_keys=json.dumps({KEY_ID: {"secret": SECRET, "company_id": 7}}),
        callback_retry_base=1.0, callback_retry_max=4.0, callback_check_interval=0.2,
    )
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings.model_copy(update={"health_port": 0}))  # one process per port
    callback_url = f"http://127.0.0.1:{port}/local/offload/callback.php?jobid=cb-outage"
    asyncio.run(submit_job(settings, job_factory("cb-outage", 100, callback_url=callback_url)))
    started = time.monotonic()
    wait_for_job(settings, "cb-outage", timeout=120)  # the job itself is not held up by Moodle being down
    time.sleep(max(0.0, outage - (time.monotonic() - started)))
    failed_during = [e for e in events(settings, "callbacks") if isinstance(e, CallbackFailed)]
    assert len(failed_during) >= 3 and all(e.status is None and e.next_attempt_at for e in failed_during)
    moodle = f"moodle 127.0.0.1:{port}"
    during = wait_for(When(health_port, "degraded", moodle, False), timeout=30)  # said while it lasts
    assert any(r.startswith(f"{moodle}: ") for r in during["reasons"]), during

    with MoodleAfterOutage({KEY_ID: SECRET}, port) as receiver:
        def completed() -> list | None:
            bodies = [r.json for r in receiver.delivered()]
            return bodies if bodies and bodies[-1]["event"] == "completed" else None

        delivered = wait_for(completed, timeout=120, what="the completed callback after the outage")

    assert all(r.valid for r in receiver.received)
    after = wait_for(When(health_port, "ready", moodle, True), timeout=30)
    assert (after["checks"][moodle]["losses"], after["checks"][moodle]["reconnects"]) == (1, 1), after
    names = [b["event"] for b in delivered]
    assert names[0] == "started" and names[-1] == "completed" and set(names[1:-1]) <= {"progress"}
    assert Counter(b["callback_id"] for b in delivered).most_common(1)[0][1] == 1  # each once
    assert delivered[-1]["totals"] == {"total": 100, "succeeded": 100, "failed": 0, "suppressed": 0, "pending": 0}
    # The worker records CallbackDelivered after Moodle's answer (and after health says Moodle is back): the
    # receiver can hold the last callback before its event is on the log, so the log is waited for.
    sent = {b["callback_id"] for b in delivered}

    def recorded() -> set[str] | None:
        ids = {e.callback_id for e in events(settings, "callbacks") if isinstance(e, CallbackDelivered)}
        return ids if ids >= sent else None

    assert wait_for(recorded, timeout=60, what="a CallbackDelivered for every delivered callback") == sent
    print("CALLBACK OUTAGE " + json.dumps({"outage_s": outage, "failed_attempts": len(failed_during),
                                           "delivered": names}))
