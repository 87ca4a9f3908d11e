"""``offload demo``: the whole system on this machine, one real email job, its progress live.

Starts the dev stack (Kafka, Postgres, a mail sink), the worker and the projector, submits an email job for
thousands of learners (a few with international names, one with an unusable address, one listed twice) and
shows its progress from Postgres until every learner has an outcome.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from config.settings import Settings
from devtools import devstack
from devtools.processes import READY, ServiceProcess
from eventlog.topics import create_topics
from offload.client import submit_job
from offload.progress import watch

FIRST = ["Zoë", "Иван", "Αλέξανδρος", "李", "Siobhán", "José", "Aiko", "Olu", "Maria", "Ahmed", "Priya", "Tom"]
LAST = ["Ångström", "Петров", "Παπαδόπουλος", "雷", "O'Neil", "García", "Tanaka", "Adeyemi", "Rossi", "Khan"]


def demo_job(job_id: str, recipients: int) -> dict:
    learners = [
        {"userid": i, "email": f"learner{i}@example.org", "firstname": FIRST[i % len(FIRST)],
         "lastname": LAST[i % len(LAST)], "department": "Operations"}
        for i in range(1, recipients + 1)
    ]
    learners.append({"userid": recipients + 1, "email": "not-an-address", "firstname": "Broken", "lastname": "Row"})
    learners.append(dict(learners[0]))  # Moodle listed this learner twice: served once
    return {
        "job_id": job_id, "type": "email", "company_id": 7, "recipients": learners,
        "template_id": "course_reminder",
        "template_data": {"course_name": "Fire Safety 101", "due_date": "31 December 2026",
                          "course_url": "https://moodle.example.org/course/view.php?id=7",
                          "site_name": "Example Learning"},
        "callback_url": "https://moodle.example.org/local/offload/callback.php",
        "timestamp": int(time.time()), "createdby": 2,
    }


def run_demo(home: Path, *, recipients: int, keep_running: bool) -> int:
    print(f"== starting the dev stack in {home} (Kafka, Postgres, mail sink)")
    info = devstack.up(home)
    settings = Settings(kafka_bootstrap_servers=info.kafka_bootstrap, database_url=info.database_url,
                        smtp_host=info.smtp_host, smtp_port=info.smtp_port,
                        certificate_storage_root=home / "certificates")
    created = asyncio.run(create_topics(settings, with_changelogs=True))
    print(f"== topics: {sum(v == 'created' for v in created.values())} created, "
          f"{sum(v == 'exists' for v in created.values())} already there")
    logs = home / "logs"
    worker = ServiceProcess("worker", settings, logs, READY["worker"])
    projector = ServiceProcess("projector", settings, logs, READY["projector"])
    try:
        print("== starting the worker and the projector (logs in", logs, ")")
        projector.start()
        worker.start()
        spool = home / "mail" / "received.jsonl"
        before = _lines(spool)
        job_id = f"demo-{uuid.uuid4().hex[:8]}"
        payload = demo_job(job_id, recipients)
        print(f"== submitting email job {job_id}: {recipients} learners + 1 unusable address + 1 listed twice")
        asyncio.run(submit_job(settings, payload))
        code = asyncio.run(watch(settings, job_id, timeout=600))
        time.sleep(0.5)  # the sink appends its record just after answering the client
        print(f"== the mail sink received {_lines(spool) - before} messages during the job ({spool})")
        print("== look closer:")
        print(f"   psql '{info.database_url}' -c \"SELECT status, count(*) FROM job_recipients "
              f"WHERE job_id = '{job_id}' GROUP BY 1\"")
        print(f"   offload job {job_id}     (with the variables printed above)")
        return code
    finally:
        if keep_running:
            print(f"== worker (pid {worker.pid}) and projector (pid {projector.pid}) keep running")
        else:
            worker.stop()
            projector.stop()
            print("== worker and projector stopped; `offload dev down` stops the stack")


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for _ in handle)
