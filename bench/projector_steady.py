"""The projector's steady-state CPU per outcome: outcomes arriving at a job's pace, projected as they come.

Run ``python -m bench.projector_steady [--rate 1500] [--seconds 12]`` with a stack up (``KAFKA_BOOTSTRAP_SERVERS``
and ``DATABASE_URL``, else the dev stack). A child process produces an email job's events at ``--rate`` outcomes/s
(a BatchDispatched per 200 learners, outcomes in groups of 20, as a worker sends them); this process runs the
projector and measures its own CPU while they arrive: ``projector_us_per_event``. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

if not __package__:  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.replay import drop, stack
from config.settings import Settings

BATCH, GROUP = 200, 20


def settings_for(tag: str) -> Settings:
    kafka, database_url = stack()
    return Settings(environment="test", kafka_bootstrap_servers=kafka, database_url=database_url,
                    topic_prefix=f"bsteady{tag}.", app_id=f"bsteady{tag}", projection_schema=f"bsteady_{tag}")


async def produce(settings: Settings, rate: int, seconds: float) -> None:
    from eventlog.publisher import EventPublisher
    from schemas.events import BatchDispatched, JobAccepted, Recipient, RecipientSent

    n = int(rate * seconds) // BATCH * BATCH
    job = "steady-job"
    publisher = EventPublisher(settings, source="urn:manireports:offload:bench")
    await publisher.send_all([JobAccepted(job_id=job, type="email", company_id=7, route="local", reason="bench",
                                          provider="smtp", template_id="course_reminder", total_recipients=n,
                                          batch_size=BATCH, batch_count=n // BATCH)])
    started = time.monotonic()
    for first in range(1, n + 1, GROUP):
        if (first - 1) % BATCH == 0:
            await publisher.send(BatchDispatched(
                job_id=job, batch_no=(first - 1) // BATCH, batch_count=n // BATCH, type="email", company_id=7,
                route="local", provider="smtp", template_id="course_reminder",
                recipients=[Recipient(userid=u, email=f"l{u}@example.org") for u in range(first, first + BATCH)]))
        for u in range(first, first + GROUP):
            await publisher.send(RecipientSent(job_id=job, batch_no=(u - 1) // BATCH, userid=u,
                                               email=f"l{u}@example.org", provider="smtp", message_id=f"<{u}@b>",
                                               attempts=1))
        await asyncio.sleep(max(0.0, started + (first + GROUP - 1) / rate - time.monotonic()))
    await publisher.flush()
    await publisher.stop()


async def project(settings: Settings, producer: subprocess.Popen) -> dict[str, float]:
    from projections.projector import Projector

    projector = Projector(settings)
    task = asyncio.create_task(projector.run())
    await asyncio.sleep(2)  # started and idle before the first outcome
    cpu, events, started = time.process_time(), projector.stats.events, time.monotonic()
    while producer.poll() is None:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)  # the last poll applied
    cpu, events = time.process_time() - cpu, projector.stats.events - events
    projector.stop()
    await task
    return {"events": events, "seconds": round(time.monotonic() - started, 1), "projector_cpu_s": round(cpu, 2),
            "projector_us_per_event": round(cpu * 1e6 / max(1, events), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1500, help="outcomes per second")
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--produce", metavar="TAG", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.produce:
        asyncio.run(produce(settings_for(args.produce), args.rate, args.seconds))
        return 0

    from eventlog.topics import create_topics

    tag = uuid.uuid4().hex[:8]
    settings = settings_for(tag)
    out: dict = {"rate_per_s": args.rate, "cores": os.cpu_count(),
                 "load_before": [round(x, 2) for x in os.getloadavg()]}
    try:
        asyncio.run(create_topics(settings))
        producer = subprocess.Popen([sys.executable, "-m", "bench.projector_steady", "--produce", tag, "--rate",
                                     str(args.rate), "--seconds", str(args.seconds)],
                                    cwd=Path(__file__).resolve().parents[1])
        try:
            out.update(asyncio.run(project(settings, producer)))
        finally:
            if producer.poll() is None:
                producer.terminate()
                producer.wait(timeout=30)
    finally:
        drop(settings, [settings.projection_schema])
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
