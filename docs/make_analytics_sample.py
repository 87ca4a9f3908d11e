"""Produces the export and the query outputs in docs/analytics.md from real jobs on a running stack.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 DATABASE_URL=postgresql://offload@127.0.0.1:15432/offload \\
        python docs/make_analytics_sample.py --scale 4 --out .dev/analytics-sample

It starts a mail sink, a worker and a projector (fresh topic prefix and database), runs the jobs of
``tests/integration/analytics_jobs.py`` (three companies, three templates, 200 to 2,400 learners at scale 4,
some learners refused by the mail server, bounce/delivery/complaint reports afterwards as signed Mailgun
webhooks through the API's webhook route, one rejected job),
exports the log with ``offload export --format parquet --partition`` (by company and date), and prints the answers
of docs/analytics.md's queries as DuckDB draws them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config.settings import Settings  # noqa: E402
from devtools.devmail import DevMailSink  # noqa: E402
from devtools.processes import READY, ServiceProcess, settings_env  # noqa: E402
from eventlog.topics import create_topics  # noqa: E402
from tests.integration.analytics_jobs import run_sample, sample_jobs, write_templates  # noqa: E402
from tests.support.stack import fresh_database  # noqa: E402

QUERIES_FILE = ROOT / "docs" / "analytics_queries.sql"


def queries() -> list[tuple[str, str]]:
    """(title, SQL) of each ``-- name: title`` block in docs/analytics_queries.sql."""
    blocks, title, lines = [], None, []
    for line in QUERIES_FILE.read_text().splitlines():
        if line.startswith("-- name: "):
            if title:
                blocks.append((title, "\n".join(lines).strip()))
            title, lines = line.removeprefix("-- name: "), []
        elif title:
            lines.append(line)
    if title:
        blocks.append((title, "\n".join(lines).strip()))
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / ".dev" / "analytics-sample")
    args = parser.parse_args()
    import asyncio

    import duckdb

    tag = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="analytics-sample-"))
    with fresh_database(os.environ["DATABASE_URL"]) as url, DevMailSink(port=0, keep_messages=False) as sink:
        settings = Settings(environment="test", kafka_bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                            database_url=url, topic_prefix=f"sample{tag}.", app_id=f"sample{tag}",
                            smtp_port=sink.port, template_dir=write_templates(work / "templates"),
                            job_batch_size=200, broker_session_timeout=6.0)
        asyncio.run(create_topics(settings, with_changelogs=True))
        procs = [ServiceProcess(c, settings, work, READY[c], cwd=ROOT) for c in ("worker", "projector")]
        try:
            for proc in procs:
                proc.start()
            jobs = sample_jobs(args.scale)
            started = time.monotonic()
            run_sample(settings, sink, jobs, timeout=900, one_at_a_time=True)
            print(f"# {sum(j.learners for j in jobs)} learners in {len(jobs)} jobs (+1 rejected), "
                  f"{time.monotonic() - started:.1f} s", flush=True)
        finally:
            for proc in procs:
                proc.stop()
        shutil.rmtree(args.out, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")} | settings_env(settings)
        command = ["offload", "export", "--format", "parquet", "--partition", str(args.out)]
        print("$ " + " ".join(command[:-1]) + " export/")
        try:
            subprocess.run([sys.executable, "-m", "offload.cli", *command[1:]], env=env, check=True, cwd=ROOT)
        finally:
            asyncio.run(drop_topics(settings))  # a shared broker should not keep every sample's topics
    os.chdir(args.out)  # the queries name the export's folders relative to it
    db = duckdb.connect()
    for title, statement in queries():
        result = db.sql(statement)
        if title != "setup":
            print(f"\n-- {title}")
            result.show(max_width=140)
    shutil.rmtree(work, ignore_errors=True)


async def drop_topics(settings: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith((settings.topic_prefix, f"{settings.app_id}-"))]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


if __name__ == "__main__":
    main()
