"""Parquet export of real jobs: typed columns and the read model's counts, read with DuckDB and pyarrow."""

from __future__ import annotations

import asyncio

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from offload.export_parquet import export_parquet
from offload.logtools import EventFilter
from tests.integration.analytics_jobs import run_sample_on_own_processes
from tests.support.observe import query

pytestmark = pytest.mark.integration


def outcome_counts(settings) -> dict[tuple[str, str], int]:
    rows = query(settings, "SELECT job_id, status, count(*) AS n FROM job_recipients GROUP BY 1, 2")
    return {(r["job_id"], r["status"]): r["n"] for r in rows}


def test_an_export_of_real_jobs_opens_in_duckdb_with_typed_columns_and_the_read_models_counts(
    settings_factory, topics_for, processes, mail_sink, tmp_path
):
    settings, jobs = run_sample_on_own_processes(settings_factory, topics_for, processes, mail_sink, tmp_path)

    out = tmp_path / "export"
    counts = asyncio.run(export_parquet(settings, EventFilter(), out))
    db = duckdb.connect()

    def types(name: str) -> dict[str, str]:
        return {row[0]: row[1] for row in db.sql(f"DESCRIBE SELECT * FROM '{out}/{name}.parquet'").fetchall()}

    sent = types("recipient.sent.v1")
    assert (sent["userid"], sent["attempts"], sent["batch_no"], sent["offset"]) == ("BIGINT",) * 4
    assert sent["sent_at"] == sent["record_time"] == sent["ce_time"] == "TIMESTAMP WITH TIME ZONE"
    assert (sent["job_id"], sent["provider"], sent["company_id"]) == ("VARCHAR", "VARCHAR", "BIGINT")
    failed = types("recipient.failed.v1")
    assert (failed["retryable"], failed["failed_at"]) == ("BOOLEAN", "TIMESTAMP WITH TIME ZONE")
    accepted = types("job.accepted.v1")
    assert (accepted["total_recipients"], accepted["company_id"], accepted["accepted_at"]) == (
        "BIGINT", "BIGINT", "TIMESTAMP WITH TIME ZONE")
    assert types("batch.completed.v1")["failures"] == "VARCHAR"  # a list: JSON text
    assert "recipients" not in types("batch.dispatched.v1")  # personal data stays out of exports
    assert types("recipient.bounced.v1")["occurred_at"] == "TIMESTAMP WITH TIME ZONE"

    # Row counts: every outcome the read model holds, per job and kind; every report; every job.
    expected = outcome_counts(settings)
    assert expected == {**{(j.job_id, "sent"): j.learners - len(j.refused) for j in jobs},
                        **{(j.job_id, "failed"): len(j.refused) for j in jobs if j.refused}}
    for kind, status in (("recipient.sent.v1", "sent"), ("recipient.failed.v1", "failed")):
        got = dict(db.sql(f"SELECT job_id, count(*) FROM '{out}/{kind}.parquet' GROUP BY 1").fetchall())
        assert got == {job: n for (job, s), n in expected.items() if s == status}
        assert counts[kind.removesuffix(".parquet")] == sum(got.values())
    for kind in ("delivered", "bounced", "complained"):
        (n,) = db.sql(f"SELECT count(*) FROM '{out}/recipient.{kind}.v1.parquet'").fetchone()
        assert n == sum(list(j.reports.values()).count(kind) for j in jobs)
        assert n == query(settings, f"SELECT sum({kind}) AS n FROM jobs")[0]["n"]
    assert db.sql(f"SELECT count(*) FROM '{out}/job.accepted.v1.parquet'").fetchone()[0] == len(jobs)
    # The webhook route put every learner who bounced or complained on their company's list: as many rows as the
    # suppressions read model holds, typed like the rest.
    listed = db.sql(f"SELECT company_id, userid, source FROM '{out}/suppression.added.v1.parquet'").fetchall()
    reported = sorted((j.company_id, u, "bounce" if k == "bounced" else "complaint")
                      for j in jobs for u, k in j.reports.items() if k != "delivered")
    assert sorted(listed) == reported
    assert len(listed) == len(query(settings, "SELECT 1 FROM suppressions"))
    assert types("suppression.added.v1")["userid"] == "BIGINT"
    rejected = db.sql(f"SELECT job_id, company_id, problems FROM '{out}/job.rejected.v1.parquet'").fetchall()
    assert [(job, company) for job, company, _ in rejected] == [("hooli-bad-1", 10)]
    assert "recipients.1.userid" in rejected[0][2]
    # Outcome events carry no company: the export fills it in from the job's JobAccepted.
    by_company = dict(db.sql(f"SELECT company_id, count(*) FROM '{out}/recipient.sent.v1.parquet' GROUP BY 1")
                      .fetchall())
    assert by_company == {c: sum(expected.get((j.job_id, "sent"), 0) for j in jobs if j.company_id == c)
                          for c in {j.company_id for j in jobs}}
    # pyarrow reads the same types.
    schema = pq.read_schema(out / "recipient.sent.v1.parquet")
    assert str(schema.field("userid").type) == "int64"
    assert str(schema.field("sent_at").type) == "timestamp[us, tz=UTC]"

    # Partitioned by company and date: the same rows, company_id and date as typed Hive columns.
    parted = tmp_path / "by-company"
    asyncio.run(export_parquet(settings, EventFilter(), parted, ("company", "date")))
    glob = f"{parted}/recipient.sent.v1/**/*.parquet"
    described = db.sql(f"DESCRIBE SELECT * FROM read_parquet('{glob}', hive_partitioning=true)").fetchall()
    hive = {r[0]: r[1] for r in described}
    assert (hive["company_id"], hive["date"], hive["userid"]) == ("BIGINT", "DATE", "BIGINT")
    assert dict(db.sql(f"SELECT company_id, count(*) FROM read_parquet('{glob}', hive_partitioning=true) "
                       "GROUP BY 1").fetchall()) == by_company
    folders = sorted(p.name for p in (parted / "recipient.sent.v1").iterdir())
    assert folders == ["company_id=7", "company_id=8", "company_id=9"]
    table = ds.dataset(parted / "recipient.failed.v1", partitioning="hive").to_table()
    assert table.num_rows == sum(n for (_, s), n in expected.items() if s == "failed")

    # A company filter keeps that company's outcomes (found through their job) and nothing else.
    only = tmp_path / "company-8"
    only_counts = asyncio.run(export_parquet(settings, EventFilter(company_id=8), only))
    assert only_counts["recipient.sent.v1"] == by_company[8]
    assert db.sql(f"SELECT DISTINCT company_id FROM '{only}/job.accepted.v1.parquet'").fetchall() == [(8,)]
