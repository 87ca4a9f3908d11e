"""Jobs of any size, sent in parts through the signed API (and by `offload submit`), against the real worker,
projector, broker, database and SMTP sink: a job larger than one request is served to everyone exactly once,
repeats across chunks are counted exactly, nothing is sent before the commit, and a commit that does not match
its chunks is refused with a clear error and a JobRejected event."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from offload.client import cancel_job, submit_job
from schemas.chunking import chunk_digest, job_digest
from schemas.events import ChunkedJobExpired, JobCompleted, JobRejected, RecipientChunkReceived
from tests.support.api import ApiServer, SignedClient, api_keys, without_api_keys
from tests.support.budget import sendgrid_budget_stack
from tests.support.moodle_receiver import MoodleReceiver
from tests.support.observe import events, wait_for, wait_for_job

pytestmark = pytest.mark.integration

K7 = "k7-secret-0123456789abcdef"
CB_KEY, CB_SECRET = "moodle-7-cb", "callback-k7-secret-0123456789abcdef"
PHP_EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "moodle" / "example.php"
SG_KEY = "SG.chunked-budget-key"
LIMIT = 300  # max_recipients_per_job, small here: a chunk may hold at most this many


def learner(userid: int) -> dict[str, object]:
    return {"userid": userid, "email": f"learner{userid}@example.org", "firstname": f"First{userid}",
            "lastname": f"Last{userid}"}


def header(job_factory, job_id: str) -> dict[str, object]:
    job = job_factory(job_id, 1, callback_url=None)
    del job["recipients"]
    return {**job, "chunked": True}


def send_chunks(client: SignedClient, job_id: str, chunks: list[list[int]]) -> list[str]:
    digests = []
    for number, userids in enumerate(chunks):
        reply = client.post(f"/api/v1/jobs/{job_id}/recipients",
                            {"chunk_no": number, "recipients": [learner(u) for u in userids]})
        assert reply.status == 202, reply.body
        assert reply.body["digest"] == chunk_digest(userids)
        digests.append(reply.body["digest"])
    return digests


def test_a_job_larger_than_one_request_reaches_everyone_once_and_repeats_across_chunks_are_counted(
        settings_factory, topics_for, processes, job_factory, mail_sink):
    settings = settings_factory(smtp_port=mail_sink.port, api_keys=api_keys(k7=(K7, 7)),
                                max_recipients_per_job=LIMIT, job_batch_size=70)
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    processes("projector", without_api_keys(settings))
    with ApiServer(settings) as server:
        k7 = SignedClient(server.base_url, "k7", K7)
        whole = k7.post("/api/v1/jobs", job_factory("too-big", 1000, callback_url=None))
        assert (whole.status, whole.code) == (422, "too_many_recipients")

        assert k7.post("/api/v1/jobs", header(job_factory, "big")).status == 202
        assert k7.post("/api/v1/jobs", header(job_factory, "big")).status == 200  # opened again: nothing new
        # 1,000 learners in four chunks: 250 and 500 each end one chunk and start the next, 600 is listed twice
        # within a chunk (three repeats).
        chunks = [list(range(1, 251)), list(range(250, 501)), sorted([*range(500, 751), 600]), list(range(751, 1001))]
        digests = send_chunks(k7, "big", chunks)
        again = k7.post("/api/v1/jobs/big/recipients", {"chunk_no": 1, "recipients": [learner(u) for u in chunks[1]]})
        assert (again.status, again.body["created"]) == (200, False)  # a retried chunk changes nothing
        other = k7.post("/api/v1/jobs/big/recipients", {"chunk_no": 1, "recipients": [learner(u) for u in [251]]})
        assert (other.status, other.code) == (409, "chunk_conflict")
        unsorted = k7.post("/api/v1/jobs/big/recipients", {"chunk_no": 4, "recipients": [learner(9), learner(8)]})
        assert (unsorted.status, unsorted.code) == (422, "unsorted_chunk")

        # Not committed: a small job sent after it completes, and still nobody of the big job has mail.
        assert k7.post("/api/v1/jobs", job_factory("control", 3, start=5001, callback_url=None)).status == 202
        wait_for_job(settings, "control")
        assert set(mail_sink.recipient_counts()) == {f"learner{u}@example.org" for u in (5001, 5002, 5003)}

        commit = k7.post("/api/v1/jobs/big/commit", {"chunk_count": 4, "total_recipients": 1003,
                                                     "digest": job_digest(digests)})
        assert commit.status == 202, commit.body
        # Routed by the time the worker's verdict is read: how far it got by then depends on the machine.
        assert commit.body["status"] in ("submitted", "accepted", "running", "completed"), commit.body
        row = wait_for_job(settings, "big", timeout=180)
        assert (row["total_recipients"], row["duplicates_removed"], row["succeeded"]) == (1000, 3, 1000)
        assert row["batch_count"] == 15  # ceil(1000 / 70): batches cut across chunk boundaries
        assert k7.post("/api/v1/jobs/big/commit", {"chunk_count": 4, "total_recipients": 1003}).status == 200

    counts = mail_sink.recipient_counts()
    assert {a: n for a, n in counts.items() if n != 1} == {}
    assert set(counts) == {f"learner{u}@example.org" for u in [*range(1, 1001), 5001, 5002, 5003]}


def test_a_commit_that_does_not_match_its_chunks_is_refused_and_nothing_is_sent(
        settings_factory, topics_for, processes, job_factory, mail_sink):
    settings = settings_factory(smtp_port=mail_sink.port, api_keys=api_keys(k7=(K7, 7)),
                                max_recipients_per_job=LIMIT)
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    processes("projector", without_api_keys(settings))
    with ApiServer(settings) as server:
        k7 = SignedClient(server.base_url, "k7", K7)
        assert k7.post("/api/v1/jobs", header(job_factory, "gap")).status == 202
        send_chunks(k7, "gap", [[1, 2, 3]])
        assert k7.post("/api/v1/jobs/gap/recipients",
                       {"chunk_no": 2, "recipients": [learner(7), learner(8)]}).status == 202
        refused = k7.post("/api/v1/jobs/gap/commit", {"chunk_count": 3, "total_recipients": 5})
        assert (refused.status, refused.code) == (422, "missing_chunks"), refused.body
        assert "chunk(s) 1 of 3 never arrived" in refused.body["error"]["message"]
        late = k7.post("/api/v1/jobs/gap/recipients", {"chunk_no": 1, "recipients": [learner(4)]})
        assert (late.status, late.code) == (409, "job_committed")

        assert k7.post("/api/v1/jobs", header(job_factory, "miscount")).status == 202
        digests = send_chunks(k7, "miscount", [[1, 2], [3, 4]])
        refused = k7.post("/api/v1/jobs/miscount/commit", {"chunk_count": 2, "total_recipients": 5,
                                                           "digest": job_digest(reversed(digests))})
        assert refused.status == 422
        assert {p["code"] for p in refused.body["error"]["problems"]} == {"recipient_count_mismatch", "digest_mismatch"}

        assert k7.post("/api/v1/jobs", job_factory("control", 2, start=100, callback_url=None)).status == 202
        wait_for_job(settings, "control")

    rejected = {e.job_id: e for e in events(settings, "jobs") if isinstance(e, JobRejected)}
    assert [p.code for p in rejected["gap"].problems] == ["missing_chunks"]
    assert {p.code for p in rejected["miscount"].problems} == {"recipient_count_mismatch", "digest_mismatch"}
    assert set(mail_sink.recipient_counts()) == {"learner100@example.org", "learner101@example.org"}


def test_offload_submit_sends_a_large_job_in_chunks_and_counts_every_repeat(
        settings_factory, topics_for, processes, job_factory, mail_sink):
    settings = settings_factory(smtp_port=mail_sink.port, max_recipients_per_job=LIMIT, job_batch_size=50)
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings)
    # 700 learners listed 760 times, unsorted: repeats next to each other, far apart, and on chunk boundaries.
    listed = list(range(700, 0, -1)) + list(range(1, 31)) + [300, 301] * 10 + list(range(600, 610))
    job = {**job_factory("cli-big", 1, callback_url=None), "recipients": [learner(u) for u in listed]}
    assert asyncio.run(submit_job(settings, job, chunk_size=100)) == "cli-big"

    row = wait_for_job(settings, "cli-big", timeout=180)
    assert (row["total_recipients"], row["duplicates_removed"], row["succeeded"]) == (700, 60, 700)
    counts = wait_for(lambda: c if len(c := mail_sink.recipient_counts()) == 700 else None, timeout=30,
                      what="700 learners in the sink")
    assert set(counts.values()) == {1}


def test_the_php_client_sends_a_job_above_its_chunk_size_in_parts(settings_factory, topics_for, processes,
                                                                  job_factory, mail_sink, tmp_path):
    php = shutil.which("php")
    assert php, "php-cli is not installed (apt-get install -y php-cli)"
    settings = settings_factory(smtp_port=mail_sink.port, api_keys=api_keys(k7=(K7, 7)),
                                max_recipients_per_job=LIMIT)
    topics_for(settings)
    processes("worker", without_api_keys(settings))
    processes("projector", without_api_keys(settings))
    listed = [*range(650, 0, -1), 5, 5, 300, 301]  # unsorted, with repeats the client sorts next to each other
    job = {**job_factory("php-big", 1, callback_url=None), "recipients": [learner(u) for u in listed]}
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    with ApiServer(settings) as server:
        done = subprocess.run([php, str(PHP_EXAMPLE), server.base_url, "k7", K7, "submit", str(job_file)],
                              capture_output=True, text=True, timeout=120, check=False,
                              env={"PATH": "/usr/bin:/bin", "OFFLOAD_CHUNK_SIZE": "250"})
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        assert reply["status"] == 202, reply
        assert reply["body"]["chunks"] == 3  # 654 listings in chunks of 250

    row = wait_for_job(settings, "php-big", timeout=180)
    assert (row["total_recipients"], row["duplicates_removed"], row["succeeded"]) == (650, 4, 650)
    counts = wait_for(lambda: c if len(c := mail_sink.recipient_counts()) == 650 else None, timeout=30,
                      what="650 learners in the sink")
    assert set(counts.values()) == {1}
    opened = [e for e in events(settings, "job-requests") if isinstance(e, RecipientChunkReceived)]
    assert sorted(e.chunk_no for e in opened) == [0, 1, 2]


def test_a_chunked_job_over_budget_waits_then_goes_and_one_cancelled_while_waiting_counts_its_learners(
        settings_factory, topics_for, processes, job_factory, mail_sink):
    # SendGrid's default price: $0.90 per 1,000: 50 learners ~ $0.045, 10 more would make $0.054.
    with sendgrid_budget_stack(settings_factory, topics_for, processes, mail_sink, api_key=SG_KEY,
                               monthly_budget=0.05) as stack:
        settings, server = stack.settings, stack.sendgrid
        asyncio.run(submit_job(settings, job_factory("within", 50, callback_url=None), chunk_size=20))
        wait_for_job(settings, "within")
        asyncio.run(submit_job(settings, job_factory("waits", 10, start=100, callback_url=None), chunk_size=4))
        asyncio.run(submit_job(settings, job_factory("given-up", 10, start=200, callback_url=None), chunk_size=4))
        assert wait_for_job(settings, "waits", status="waiting")["total_recipients"] == 10
        wait_for_job(settings, "given-up", status="waiting")
        asyncio.run(cancel_job(settings, "given-up"))
        wait_for_job(settings, "given-up", status="cancelled")
        assert len(server.delivered) == 50

        stack.set_budget(1.0)
        done = wait_for_job(settings, "waits")
        assert (done["route"], done["succeeded"], done["failed"]) == ("cloud", 10, 0)
        assert "waited for the monthly budget since" in done["route_reason"]
        (cancelled,) = [e for e in events(settings, "jobs") if isinstance(e, JobCompleted) and e.job_id == "given-up"]
        assert (cancelled.cancelled, cancelled.succeeded, cancelled.total) == (True, 0, 10)
        assert len(server.by_recipient()) == 60 and mail_sink.count() == 0


OPEN_HOURS = 1 / 3600  # one second, set only on the worker that takes over once both jobs are written


def test_a_chunked_job_never_committed_is_closed_after_the_limit_and_a_late_commit_is_refused(
        settings_factory, topics_for, processes, job_factory, mail_sink):
    # The limit is the worker's setting. A worker with the default (24 h) serves while the jobs are written, so no
    # step races the limit however slow the machine; then one allowing a second takes over.
    settings = settings_factory(smtp_port=mail_sink.port, api_keys=api_keys(k7=(K7, 7)),
                                max_recipients_per_job=LIMIT, chunked_job_max_open_hours=OPEN_HOURS,
                                job_expiry_interval_seconds=0.5, callback_check_interval=0.2,
                                api_allow_private_callbacks=True,  # the Moodle receiver is on loopback
                                callback_keys=json.dumps({CB_KEY: {"secret": CB_SECRET, "company_id": 7}}))
    patient = without_api_keys(settings).model_copy(update={"chunked_job_max_open_hours": 24.0})
    topics_for(settings)
    first = processes("worker", patient)
    processes("projector", without_api_keys(settings))
    with ApiServer(settings) as server, MoodleReceiver({CB_KEY: CB_SECRET}) as moodle:
        k7 = SignedClient(server.base_url, "k7", K7)
        # Nobody waits for an answer when a job is closed: Moodle is told at the job's callback URL.
        opened = {**header(job_factory, "stale"), "callback_url": moodle.url("/local/offload/cb.php?wstoken=T0K")}
        assert k7.post("/api/v1/jobs", opened).status == 202
        send_chunks(k7, "stale", [[1, 2, 3]])
        # A job committed is served as usual: the limit is about jobs left open.
        assert k7.post("/api/v1/jobs", header(job_factory, "prompt")).status == 202
        send_chunks(k7, "prompt", [[11, 12]])
        assert k7.post("/api/v1/jobs/prompt/commit", {"chunk_count": 1, "total_recipients": 2}).status == 202
        assert wait_for_job(settings, "prompt")["succeeded"] == 2
        assert k7.get("/api/v1/jobs/stale").status == 404  # still open: the first worker's limit is a day
        first.stop()
        processes("worker", without_api_keys(settings))

        view = wait_for(lambda: (v := k7.get("/api/v1/jobs/stale")).status == 200 and v.body, timeout=60,
                        what="the open job closed and projected")
        assert view["status"] == "rejected"
        (problem,) = view["rejection"]["problems"]
        assert problem["code"] == "chunked_job_not_committed" and f"not committed within {OPEN_HOURS:g} h" in \
            problem["message"] and "1 chunk(s) received" in problem["message"]

        # The client comes back: its commit and any chunk get a clear answer, and nothing is sent.
        late = k7.post("/api/v1/jobs/stale/commit", {"chunk_count": 1, "total_recipients": 3})
        assert (late.status, late.code) == (410, "chunked_job_expired"), late.body
        assert late.body["error"]["problems"][0]["code"] == "chunked_job_not_committed"
        chunk = k7.post("/api/v1/jobs/stale/recipients", {"chunk_no": 1, "recipients": [learner(4)]})
        assert (chunk.status, chunk.code) == (410, "chunked_job_expired")
        told = wait_for(lambda: moodle.delivered(), timeout=60, what="the rejected callback")
    assert [r.json["event"] for r in moodle.received] == ["rejected"]  # once, and signed
    assert told[0].valid and told[0].path == "/local/offload/cb.php?wstoken=T0K"
    body = told[0].json
    assert (body["job_id"], body["company_id"], body["status"]) == ("stale", 7, "rejected")
    assert body["problems"] == [problem] and body["totals"]["total"] == 0

    expired = [e for e in events(settings, "job-requests") if isinstance(e, ChunkedJobExpired)]
    assert {e.job_id for e in expired} == {"stale"}
    assert (expired[0].company_id, expired[0].chunks_received, expired[0].max_open_hours) == (7, 1, OPEN_HOURS)
    rejected = [e for e in events(settings, "jobs") if isinstance(e, JobRejected)]
    assert [(e.job_id, e.company_id, [p.code for p in e.problems]) for e in rejected] == [
        ("stale", 7, ["chunked_job_not_committed"])]
    assert set(mail_sink.recipient_counts()) == {"learner11@example.org", "learner12@example.org"}
