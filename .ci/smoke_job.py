"""The service's smoke job, as a user would drive it (.ci/wheel-smoke: installed from the wheel; .ci/image-smoke: run
from the Docker image): readiness of the API, worker and projector, the admin page and the OpenAPI document, a
signed job of 25 learners through the API and a refused one, until the read model says every learner was sent
and the mail sink holds every message. The standard library only (no import of the project's own modules, which
may move): HMAC signing as the README describes it.

    python smoke_job.py LABEL API_PORT SECRET SPOOL_FILE TAG MAIL_SINK_PID WORKER_PID PROJECTOR_PID API_PID

with SMOKE_WORKER_HEALTH and SMOKE_PROJECTOR_HEALTH the two processes' health ports. Exits non-zero with why."""

import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request

label, port, secret, spool, tag = sys.argv[1:6]
pids = dict(zip(("mail sink", "worker", "projector", "api"), map(int, sys.argv[6:10]), strict=True))
base = f"http://127.0.0.1:{port}"
N = 25


def alive() -> None:
    for name, pid in pids.items():
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (started by the shell): probe it instead
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    zombie = stat.read().rsplit(")", 1)[1].split()[0] == "Z"
            except FileNotFoundError:
                zombie = True
            if zombie:
                sys.exit(f"{label}: {name} (pid {pid}) exited")
            continue
        if done:
            sys.exit(f"{label}: {name} (pid {pid}) exited with {status}")


def wait(what: str, check, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while True:
        alive()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            sys.exit(f"{label}: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def call(method: str, path: str, body: object = None) -> tuple[int, object]:
    data = b"" if body is None else json.dumps(body).encode()
    ts, nonce = str(int(time.time())), secrets.token_urlsafe(18)
    canonical = f"{method}\n{path}\n{ts}\n{nonce}\n{hashlib.sha256(data).hexdigest()}".encode()
    headers = {"X-Offload-Key-Id": "smoke-7", "X-Offload-Timestamp": ts, "X-Offload-Nonce": nonce,
               "X-Offload-Signature": hmac.new(secret.encode(), canonical, hashlib.sha256).hexdigest(),
               "Content-Type": "application/json"}
    request = urllib.request.Request(base + path, data=data if method != "GET" else None, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def health():
    try:
        with urllib.request.urlopen(base + "/api/v1/health", timeout=5) as reply:
            body = json.loads(reply.read())
            return body if reply.status == 200 and body["status"] == "ready" else None  # "degraded" names why
    except (OSError, ValueError):
        return None


print(f"{label}: api health", wait("the API's health endpoint", health))
# The UI's templates and static files come from the wheel's package data.
with urllib.request.urlopen(base + "/ui/login", timeout=10) as reply:
    assert reply.status == 200 and b"<form" in reply.read(), "the admin sign-in page did not render"
with urllib.request.urlopen(base + "/api/v1/openapi.yaml", timeout=10) as reply:
    assert reply.status == 200 and b"openapi:" in reply.read(), "the OpenAPI document is not served"

job_id = f"{tag}-job"
job = {"job_id": job_id, "type": "email", "company_id": 7, "template_id": "course_reminder",
       "template_data": {"course_name": "Wheel Smoke 101", "due_date": "2026-12-31",
                         "course_url": "https://moodle.example.org/course/view.php?id=7"},
       "recipients": [{"userid": i, "email": f"smoke{i}@example.org", "firstname": f"F{i}", "lastname": f"L{i}"}
                      for i in range(1, N + 1)]}
status, reply = call("POST", "/api/v1/jobs", job)
assert status == 202, (status, reply)
status, reply = call("POST", "/api/v1/jobs", {**job, "job_id": f"{tag}-bad", "template_id": "no_such_template"})
assert status == 422 and reply["error"]["code"] == "unknown_template", (status, reply)


def completed():
    status, reply = call("GET", f"/api/v1/jobs/{job_id}")
    return reply if status == 200 and reply["status"] == "completed" else None


done = wait(f"job {job_id} to complete in the read model", completed)
assert done["progress"]["sent"] == N and done["progress"]["failed"] == 0, done["progress"]


def delivered():
    try:
        with open(spool) as handle:
            return {r for line in handle for r in json.loads(line)["rcpt"]} >= {f"smoke{i}@example.org"
                                                                               for i in range(1, N + 1)}
    except FileNotFoundError:
        return False


wait("every message at the mail sink", delivered, timeout=30)


def process_health(process: str, port: str):
    """The worker's or projector's own /health (OFFLOAD_HEALTH_PORT) once it says ready."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
            body = json.loads(reply.read())
            return body if body["process"] == process and body["status"] == "ready" else None
    except (OSError, ValueError):
        return None


for process, port in (("worker", os.environ["SMOKE_WORKER_HEALTH"]),
                      ("projector", os.environ["SMOKE_PROJECTOR_HEALTH"])):
    ready = wait(f"the {process}'s health endpoint", lambda process=process, port=port: process_health(process, port))
    print(f"{label}: {process} health", ready["checks"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    assert f'offload_process_serving{{process="{process}"}} 1.0' in text.splitlines(), text[:2000]
alive()
print(f"{label}: job {job_id}: {N} learners sent, read model completed, every message at the sink")
