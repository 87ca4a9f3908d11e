"""The cloud provider down: a job routed to SES with SES unreachable, against the same job sent locally.

Starts (or reuses) the dev stack's Kafka and Postgres, its own mail sink, one worker and the projector, with
SES pointed at a loopback port nothing listens on (connection refused, as for a provider outage). Runs a local
job of ``-n`` learners, then a cloud job of ``-n`` learners of a company routed to SES, ``--repeat`` times (each
time with a new worker, so its breaker starts closed), and prints one JSON line: both rates, their median
ratio (target >= 0.8: the circuit breaker sends batches straight to the local relay once it has opened), how
many batches fell back, and the breaker events. Before the breaker: 33/s against ~1,200/s (0.03),
with 80 separate fallback decisions for 2,000 learners.

    python -m bench.provider_outage -n 2000 [--repeat 3] [--home .dev]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from bench.jobs import CLOUD_COMPANY, LOCAL_COMPANY, REPO, drop_own_artifacts, run_job
from bench.mail_sink import LineCounter, SinkProcess
from config.settings import Settings
from devtools.processes import ServiceProcess
from tests.support.email import closed_port


def log(msg: str) -> None:
    print(f"[provider-outage] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="learners of each job")
    parser.add_argument("--home", type=Path, default=REPO / ".dev")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true", help="keep this run's topics and schema")
    parser.add_argument("--repeat", type=int, default=3,
                        help="pairs of jobs, each with a new worker (a fresh, closed breaker); the median ratio counts")
    args = parser.parse_args(argv)

    from devtools import devstack
    from eventlog.topics import create_topics
    from offload.client import change_company_settings
    from tests.support.observe import events

    info = devstack.up(args.home, start_mail_sink=False, log=lambda *a: None)
    tag = uuid.uuid4().hex[:10]
    work = Path(tempfile.mkdtemp(prefix=f"bench-outage-{tag}-"))
    with ExitStack() as stack:
        sink = SinkProcess(work / "mail", work / "sink.log").start()
        stack.callback(sink.stop)
        settings = Settings(
            environment="test", kafka_bootstrap_servers=info.kafka_bootstrap, database_url=info.database_url,
            topic_prefix=f"b{tag}.", app_id=f"b{tag}", projection_schema=f"b_{tag}", broker_session_timeout=6.0,
            smtp_host="127.0.0.1", smtp_port=sink.port,
            aws_endpoint_url=f"http://127.0.0.1:{closed_port()}",  # SES is down: connection refused
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        if not args.keep:
            stack.callback(drop_own_artifacts, settings, tag)
        asyncio.run(create_topics(settings, with_changelogs=True))
        asyncio.run(change_company_settings(settings, CLOUD_COMPANY, cloud_enabled=True, use_cloud_for_emails=True,
                                            user_threshold=1, email_provider="ses", changed_by="bench"))
        projector = ServiceProcess("projector", settings, work, None, cwd=REPO).start()
        stack.callback(projector.stop)
        pairs = []
        for round_no in range(args.repeat):
            # A new worker each round: its breakers start closed, so every SES-down job pays the discovery.
            worker = ServiceProcess("worker", settings, work, None, cwd=REPO).start()
            try:
                worker.wait_for_log("Worker]: Ready", timeout=120)
                deadline = time.monotonic() + 60
                # Only the first worker applies (and logs) the change; later ones recover the table before Ready.
                while round_no == 0 and f"company {CLOUD_COMPANY} settings" not in worker.log_text():
                    if time.monotonic() > deadline:
                        raise TimeoutError("the worker did not apply the cloud company's settings within 60 s")
                    time.sleep(0.2)
                # Warm the new worker up (SMTP sessions, templates, partitions) so neither measured job pays it.
                run_job(settings, f"warm-{tag}-{round_no}", 200, LOCAL_COMPANY, args.timeout, None)
                counter = LineCounter(sink.received_file, sink.size())
                local = run_job(settings, f"local-{tag}-{round_no}", args.n, LOCAL_COMPANY, args.timeout, counter)
                counter = LineCounter(sink.received_file, sink.size())
                cloud = run_job(settings, f"cloud-{tag}-{round_no}", args.n, CLOUD_COMPANY, args.timeout, counter)
                assert cloud["row"]["succeeded"] == args.n, cloud["row"]
                pairs.append((args.n / local["seconds"], args.n / cloud["seconds"]))
                log(f"round {round_no + 1}: local {pairs[-1][0]:,.0f}/s, SES down {pairs[-1][1]:,.0f}/s")
                breaker_lines = worker.log_text().count("circuit of ses")
            finally:
                worker.stop()
        fell_back = [e for e in events(settings, "jobs") if type(e).__name__ == "JobFellBackToLocal"]
        circuit = [type(e).__name__ for e in events(settings, "provider-health")]
        ratios = sorted(cloud_rate / local_rate for local_rate, cloud_rate in pairs)
        out = {
            "n": args.n,
            "rounds": [{"local_per_s": round(a, 1), "ses_down_per_s": round(b, 1), "ratio": round(b / a, 3)}
                       for a, b in pairs],
            "ratio": round(statistics.median(ratios), 3),
            "batches_fell_back": len(fell_back),
            "fallback_reasons": sorted({e.reason.split(":")[0] for e in fell_back}),
            "circuit_events": dict(Counter(circuit)),
            "breaker_log_lines_last_worker": breaker_lines,
            "load": list(os.getloadavg()),
        }
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
