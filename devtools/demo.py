"""``offload demo``: the whole system on this machine, one real email job, its progress live.

Starts the dev stack (Kafka, Postgres, a mail sink), the worker and the projector, submits an email job for
thousands of learners (a few with international names, one with an unusable address, one listed twice) and
shows its progress from Postgres until every learner has an outcome.

``--provider sendgrid`` / ``mailgun`` sends the job through that provider's API instead: a local test server
(``devtools.provider_servers``, in this process) stands in for the provider, checks every call as the
provider documents it and counts what it accepted; the demo company is set to that provider for the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from config.settings import Settings
from devtools import devstack
from devtools.processes import READY, ServiceProcess
from devtools.provider_servers import MailgunServer, ProviderServer, SendGridServer
from eventlog.topics import create_topics
from offload.client import change_company_settings, submit_job
from offload.progress import watch

COMPANY = 7
DEMO_KEYS = {"sendgrid": "SG.offload-demo-key", "mailgun": "key-offload-demo"}
MAILGUN_DOMAIN = "mg.example.org"

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


@contextlib.contextmanager
def provider_server(provider: str) -> Iterator[tuple[ProviderServer | None, dict[str, Any]]]:
    """The local stand-in for a cloud provider's API and the settings that point the worker at it."""
    if provider == "smtp":
        yield None, {}
        return
    server: ProviderServer
    if provider == "sendgrid":
        server = SendGridServer(api_key=DEMO_KEYS["sendgrid"])
    else:
        server = MailgunServer(DEMO_KEYS["mailgun"], MAILGUN_DOMAIN)
    with server:
        if provider == "sendgrid":
            yield server, {"sendgrid_api_key": DEMO_KEYS["sendgrid"], "sendgrid_base_url": server.base_url}
        else:
            yield server, {"mailgun_api_key": DEMO_KEYS["mailgun"], "mailgun_domain": MAILGUN_DOMAIN,
                           "mailgun_base_url": server.base_url}


def run_demo(home: Path, *, recipients: int, keep_running: bool, provider: str = "smtp") -> int:
    print(f"== starting the dev stack in {home} (Kafka, Postgres, mail sink)")
    info = devstack.up(home)
    settings = Settings(kafka_bootstrap_servers=info.kafka_bootstrap, database_url=info.database_url,
                        smtp_host=info.smtp_host, smtp_port=info.smtp_port,
                        certificate_storage_root=home / "certificates")
    return run_job_demo(settings, home, recipients=recipients, keep_running=keep_running, provider=provider)


def run_job_demo(settings: Settings, home: Path, *, recipients: int, keep_running: bool = False,
                 provider: str = "smtp") -> int:
    """The demo on a running stack: topics, company settings, worker and projector, one job watched to the end."""
    with provider_server(provider) as (server, provider_settings):
        settings = settings.model_copy(update=provider_settings)
        if server is not None and keep_running:
            print(f"== note: the {provider} test server lives in this process; once the demo exits, company "
                  f"{COMPANY}'s jobs fall back to the local relay")
        created = asyncio.run(create_topics(settings, with_changelogs=True))
        print(f"== topics: {sum(v == 'created' for v in created.values())} created, "
              f"{sum(v == 'exists' for v in created.values())} already there")
        logs = home / "logs"
        # Health on a port of each one's own, picked now so two demos (or a demo beside CI) never collide.
        worker = ServiceProcess("worker", _with_health_port(settings), logs, READY["worker"])
        projector = ServiceProcess("projector", _with_health_port(settings), logs, READY["projector"])
        try:
            return _submit_and_watch(settings, home, recipients, provider, server, worker, projector)
        finally:
            if keep_running:
                print(f"== worker (pid {worker.pid}) and projector (pid {projector.pid}) keep running")
                for process in (worker, projector):
                    print(f"   curl http://127.0.0.1:{process.settings.health_port}/health     "
                          f"({process.command}'s health; /metrics beside it)")
            else:
                worker.stop()
                projector.stop()
                print("== worker and projector stopped; `offload dev down` stops the stack")


def _submit_and_watch(settings: Settings, home: Path, recipients: int, provider: str, server: ProviderServer | None,
                      worker: ServiceProcess, projector: ServiceProcess) -> int:
    # The demo company's settings, every run: a dev stack keeps them from the run before.
    cloud = provider != "smtp"
    asyncio.run(change_company_settings(settings, COMPANY, cloud_enabled=cloud, use_cloud_for_emails=cloud,
                                        user_threshold=1, email_provider=provider if cloud else "ses",
                                        changed_by="offload demo"))
    where = f"the {provider} API (a local test server at {server.base_url})" if server else "the local relay"
    print(f"== company {COMPANY} sends through {where}")
    print("== starting the worker and the projector (logs in", worker.log_path.parent, ")")
    projector.start()
    worker.start()
    worker.wait_for_log(f"company {COMPANY} settings", timeout=60)
    spool = home / "mail" / "received.jsonl"
    before = _lines(spool)
    job_id = f"demo-{uuid.uuid4().hex[:8]}"
    payload = demo_job(job_id, recipients)
    print(f"== submitting email job {job_id}: {recipients} learners + 1 unusable address + 1 listed twice")
    asyncio.run(submit_job(settings, payload))
    code = asyncio.run(watch(settings, job_id, timeout=600, out=sys.stdout))
    time.sleep(0.5)  # the sink appends its record just after answering the client
    print(f"== the mail sink received {_lines(spool) - before} messages during the job ({spool})")
    if server is not None:
        accepted = [c for c in server.calls if c.status < 300]
        learners = server.by_recipient()
        once = "each once" if all(len(m) == 1 for m in learners.values()) else "SOME TWICE"
        print(f"== the {provider} test server accepted {len(accepted)} of {len(server.calls)} calls, carrying "
              f"{len(server.delivered)} messages for {len(learners)} learners ({once})")
    for process in (worker, projector):
        print(f"== {process.command} health: {_health(process.settings)}")
    print("== look closer:")
    print(f"   psql '{settings.database_url}' -c \"SELECT status, count(*) FROM job_recipients "
          f"WHERE job_id = '{job_id}' GROUP BY 1\"")
    print(f"   offload job {job_id}     (with the variables printed above)")
    return code


def _with_health_port(settings: Settings) -> Settings:
    """``settings`` with a free loopback port for the process's /health and /metrics (one port per process: an
    OFFLOAD_HEALTH_PORT in the environment would give the worker and the projector the same one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return settings.model_copy(update={"health_host": "127.0.0.1", "health_port": port})


def _health(settings: Settings) -> str:
    """What a process's /health says, in one line: its status, and why when it is not ready."""
    url = f"http://127.0.0.1:{settings.health_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError as exc:
        return f"no answer from {url} ({exc})"
    checks = ", ".join(f"{name} {'up' if check['up'] else 'DOWN'}" for name, check in sorted(body["checks"].items()))
    reasons = f"; {'; '.join(body['reasons'])}" if body["reasons"] else ""
    return f"{body['status']} ({checks}){reasons}"


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for _ in handle)
