"""``offload``: start the worker and projector, run the dev stack, create topics, submit jobs, watch progress."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from config.load import settings_or_exit
from config.settings import Settings
from offload import certificates_cli


def _settings() -> Settings:
    return settings_or_exit()  # names the variable and the problem, never a secret's value


def _service_settings() -> Settings:
    """The settings of a long-running process (worker, projector, API), its event loop chosen by them
    (offload/loop.py) before anything makes one."""
    from offload.loop import use_event_loop

    settings = _settings()
    use_event_loop(settings.event_loop)
    return settings


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from adapters.email.dkim import DkimKeyError, DkimSigners
    from eventlog.topics import create_topics
    from offload.heap import return_large_blocks
    from resilience.collector import collect_for_throughput
    from streams.app import create_app

    return_large_blocks()  # the worker's resident size stays near its start-up size (offload.heap)
    settings = _service_settings()
    if settings.environment == "production":  # a DKIM key that cannot sign stops the worker before anything
        try:
            DkimSigners(settings.dkim_keys, strict=True)
        except DkimKeyError as exc:
            sys.exit(f"configuration error: {exc}")
    asyncio.run(create_topics(settings, with_changelogs=True))
    app = create_app(settings)
    collect_for_throughput()  # no full collections of the whole heap while it sends (resilience.collector)
    faust.Worker(app, loglevel=args.loglevel).execute_from_commandline()
    return 0


def cmd_projector(args: argparse.Namespace) -> int:
    from offload.heap import return_large_blocks
    from projections.projector import Projector

    return_large_blocks()  # as the worker's (offload.heap)
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _service_settings()
    projector = Projector(settings, schema=args.schema)

    async def main() -> None:
        import signal

        from eventlog.served import served

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, projector.stop)
        if args.until_caught_up:
            stats = await projector.run(until_caught_up=True)
        else:
            # GET /health and /metrics on OFFLOAD_HEALTH_PORT, starting until its read models and positions are ready
            async with served("projector", settings, serving=lambda: projector.serving):
                stats = await projector.run(until_caught_up=False)
        print(f"projected {stats.events} events in {stats.seconds:.1f} s ({stats.per_second:,.0f}/s)")

    asyncio.run(main())
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from api.app import run_api

    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_api(_service_settings(), args.host, args.port)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from offload.replay import replay
    from offload.snapshot import SnapshotTooOld, replay_from_snapshot

    try:
        settings = _settings()
        stats = asyncio.run(replay_from_snapshot(settings, args.from_snapshot, args.schema) if args.from_snapshot
                            else replay(settings, args.schema))
    except SnapshotTooOld as exc:
        raise SystemExit(str(exc)) from None
    print(json.dumps({"schema": args.schema, "from_snapshot": args.from_snapshot, "events": stats.events,
                      "seconds": round(stats.seconds, 2), "events_per_s": round(stats.per_second)}))
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    from offload.snapshot import take_snapshot

    snapshot = asyncio.run(take_snapshot(_settings(), args.name))
    print(json.dumps({"snapshot": snapshot.schema, "rows": snapshot.rows,
                      "offsets": {f"{t}[{p}]": o for (t, p), o in sorted(snapshot.offsets.items())}}))
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from eventlog.topics import create_topics

    for name, state in asyncio.run(create_topics(_settings())).items():
        print(f"{state:8} {name}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from offload.client import CHUNK_SIZE, submit_job

    payload = json.loads(Path(args.file).read_text())
    job_id = asyncio.run(submit_job(_settings(), payload, chunk_size=args.chunk_size or CHUNK_SIZE))
    print(f"submitted {job_id}")
    if args.wait:
        from offload.progress import watch

        return asyncio.run(watch(_settings(), job_id, timeout=args.timeout))
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    from offload.progress import watch

    return asyncio.run(watch(_settings(), args.job_id, timeout=args.timeout))


def cmd_retry(args: argparse.Namespace) -> int:
    from offload.client import request_retry

    asyncio.run(request_retry(_settings(), args.job_id, only_retryable=not args.all, requested_by=args.by))
    print(f"retry of {args.job_id} requested ({'every failure' if args.all else 'retryable failures'})")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from offload.client import resume_job

    asyncio.run(resume_job(_settings(), args.job_id, requested_by=args.by, reason=args.reason))
    print(f"resume of {args.job_id} requested")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from offload.client import cancel_job

    asyncio.run(cancel_job(_settings(), args.job_id, requested_by=args.by, reason=args.reason))
    print(f"cancel of {args.job_id} requested")
    return 0


def cmd_company_settings(args: argparse.Namespace) -> int:
    from offload.client import change_company_settings

    event = asyncio.run(change_company_settings(
        _settings(), args.company_id, cloud_enabled=args.cloud, use_cloud_for_emails=args.emails,
        use_cloud_for_certificates=args.certificates, user_threshold=args.threshold,
        email_provider=args.email_provider, storage_provider=args.storage_provider, changed_by=args.changed_by,
        monthly_budget=args.monthly_budget, over_budget=args.over_budget,
    ))
    print(event.model_dump_json(indent=2))
    return 0


def _filter(args: argparse.Namespace):
    from datetime import datetime

    from offload.logtools import EventFilter

    def when(text: str | None):
        return datetime.fromisoformat(text) if text else None

    return EventFilter(job_id=args.job, company_id=args.company, type_contains=args.type,
                       since=when(args.since), until=when(args.until))


def cmd_tail(args: argparse.Namespace) -> int:
    from offload.logtools import tail

    try:
        asyncio.run(tail(_settings(), _filter(args), follow=not args.no_follow, from_beginning=args.from_beginning))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    partition_by = tuple(p for p in (args.partition_by or "").split(",") if p)
    if args.format == "parquet":
        from offload.export_parquet import export_parquet

        counts = asyncio.run(export_parquet(_settings(), _filter(args), Path(args.out_dir), partition_by))
        suffix = "/" if partition_by else ".parquet"
    else:
        from offload.logtools import export_csv

        if partition_by:
            raise SystemExit("--partition-by needs --format parquet")
        counts = asyncio.run(export_csv(_settings(), _filter(args), Path(args.out_dir)))
        suffix = ".csv"
    for name, n in sorted(counts.items()):
        print(f"{n:8} {name}{suffix}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from offload.progress import list_jobs

    for line in asyncio.run(list_jobs(_settings(), company_id=args.company, status=args.status, limit=args.limit)):
        print(line)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from devtools import devstack

    home = Path(args.home).resolve()
    if args.action == "up":
        devstack.up(home)  # prints the connection settings as environment lines
    elif args.action == "down":
        devstack.down(home)
    else:
        for service, state in devstack.status(home).items():
            print(f"{service:10} {state}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from devtools.demo import run_demo

    return run_demo(Path(args.home).resolve(), recipients=args.recipients, keep_running=args.keep_running,
                    provider=args.provider)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offload", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run the Faust worker (routing, batches, progress)")
    p.add_argument("-l", "--loglevel", default="info")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("projector", help="keep the Postgres read models current")
    p.add_argument("-l", "--loglevel", default="info")
    p.add_argument("--schema", help="Postgres schema of the read models (default OFFLOAD_PROJECTION_SCHEMA)")
    p.add_argument("--until-caught-up", action="store_true", help="stop once the log's current end is reached")
    p.set_defaults(func=cmd_projector)

    p = sub.add_parser("api", help="serve the Moodle-facing HTTP API (signed ingest, progress, settings)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-l", "--loglevel", default="info")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("replay", help="rebuild every read model from offset 0 (or from a snapshot) into a fresh "
                                      "schema")
    p.add_argument("schema")
    p.add_argument("--from-snapshot", metavar="SNAPSHOT", help="start from this snapshot (offload snapshot)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("snapshot", help="copy the read models and their log offsets into a new schema, so a "
                                        "replay needs only the log after it (docs/retention.md)")
    p.add_argument("name")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("topics", help="create the public topics (idempotent)")
    p.add_argument("action", choices=["create"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("submit", help="submit a job from a JSON file (the original design's Job JSON)")
    p.add_argument("file")
    p.add_argument("--wait", action="store_true", help="show live progress until the job completes")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--chunk-size", type=int, default=None,
                   help="send a job with more learners than this (default 50,000) or than max_recipients_per_job "
                        "in chunks")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("job", help="show a job's live progress until it completes")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, default=3600)
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("retry", help="serve a job's failed learners again, as a new run")
    p.add_argument("job_id")
    p.add_argument("--all", action="store_true", help="also failures marked not retryable")
    p.add_argument("--by", default="cli", help="who asks (recorded in the event)")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("cancel", help="stop serving a job's batches that have not started")
    p.add_argument("job_id")
    p.add_argument("--reason")
    p.add_argument("--by", default="cli", help="who asks (recorded in the event)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("resume", help="send a paused job's waiting batches (it paused on its bounce/complaint rate)")
    p.add_argument("job_id")
    p.add_argument("--reason")
    p.add_argument("--by", default="cli", help="who asks (recorded in the event)")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("settings", help="change a company's cloud settings")
    p.add_argument("company_id", type=int)
    p.add_argument("--cloud", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--emails", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--certificates", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--threshold", type=int, default=0)
    p.add_argument("--email-provider", choices=["ses", "sendgrid", "mailgun"], default="ses")
    p.add_argument("--storage-provider", choices=["s3", "r2"], default="s3")
    p.add_argument("--monthly-budget", type=float, default=None,
                   help="cloud spend allowed per UTC month (OFFLOAD_CURRENCY)")
    p.add_argument("--over-budget", choices=["local", "wait"], default="local",
                   help="a cloud job that would pass the budget goes local, or waits until the budget allows it")
    p.add_argument("--changed-by", default="cli")
    p.set_defaults(func=cmd_company_settings)

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--job", help="only this job id")
        p.add_argument("--company", type=int, help="only this company")
        p.add_argument("--type", help="only event types containing this, e.g. recipient.failed")

    p = sub.add_parser("tail", help="decoded events from the topics, live")
    filters(p)
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--no-follow", action="store_true", help="stop at the current end of the log")
    p.set_defaults(func=cmd_tail, since=None, until=None)  # tail follows the log: no time range

    p = sub.add_parser("export", help="the event log (a time range, a company, a job) to CSV or Parquet files, "
                                      "one per event type")
    filters(p)
    p.add_argument("--since", help="ISO time, e.g. 2026-11-01T00:00:00+00:00")
    p.add_argument("--until", help="ISO time (exclusive)")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv",
                   help="parquet: typed columns (needs the analytics extra)")
    p.add_argument("--partition-by", metavar="KEYS",
                   help="parquet only: company, date or company,date (Hive-style directories)")
    p.add_argument("--partition", dest="partition_by", action="store_const", const="company,date",
                   help="parquet only: the same as --partition-by company,date")
    p.add_argument("out_dir")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("jobs", help="recent jobs with their progress")
    p.add_argument("--company", type=int)
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("dev", help="real Kafka, Postgres and a mail sink on loopback, without Docker")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--home", default=".dev", help="where the stack keeps its data, logs and pids")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("demo", help="start everything and run a real email job with live progress")
    p.add_argument("--recipients", type=int, default=5000)
    p.add_argument("--home", default=".dev")
    p.add_argument("--keep-running", action="store_true", help="leave the worker and projector running")
    p.add_argument("--provider", choices=["smtp", "sendgrid", "mailgun"], default="smtp",
                   help="send through the local relay (the mail sink), or through a local SendGrid/Mailgun test "
                        "server that checks each call as the provider documents it")
    p.set_defaults(func=cmd_demo)

    certificates_cli.add_commands(sub)  # offload certificates verify CODE | zip JOB OUT.zip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
