"""A replay's decoder process formats the rows it builds for COPY (recipients.copied), and the projector sends
those bytes as they are: Postgres must receive the same rows as when the projector copies them one write_row
at a time, and the read models must come out as when the live projector applies the same events."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from config.settings import Settings
from projections import read_models, recipients
from projections.base import Position
from schemas.events import BatchDispatched, CertificateIssued, Event, Recipient, RecipientFailed, RecipientSent
from schemas.events.suppression import RecipientSuppressed
from schemas.samples import samples
from tests.support.stack import Infra, fresh_database

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, 23, 59, 59, 999_999, tzinfo=UTC)


def _samples(cls: type[Event]) -> list[Event]:
    return [cls.model_validate(data) for data in samples(cls.model_json_schema()).values()]


def log() -> list[Event | None]:
    """Every kind build takes (the schemas' minimal and full samples, a learner each), and values that test the format: text
    with tabs, newlines, backslashes and non-ASCII, nulls, a later run, a date, a long error."""
    odd = "tab\there, new\nline, back\\slash, « ünïcödé » ✓"
    outcomes = [*_samples(RecipientSent), *_samples(RecipientFailed), *_samples(RecipientSuppressed),
                *_samples(CertificateIssued)]
    events: list[Event | None] = [
        *(e.model_copy(update={"userid": 100 + i, **({"code": f"C{i}"} if isinstance(e, CertificateIssued) else {})})
          for i, e in enumerate(outcomes)),  # a row each
        *[b for b in _samples(BatchDispatched) if b.run == 0],
        BatchDispatched(job_id="copied", batch_no=3, batch_count=4, type="email", company_id=7, route="local",
                        provider="smtp", template_id="t", dispatched_at=T0,
                        recipients=[Recipient(userid=u, email=f"l{u}@exämple.org") for u in range(1, 40)]),
        RecipientSent(job_id="copied", batch_no=3, userid=1, email="l1@exämple.org", provider=odd,
                      message_id=f"<{odd}>", attempts=2, sent_at=T0),
        RecipientFailed(job_id="copied", run=2, batch_no=3, userid=2, email="l2@exämple.org", provider="smtp",
                        error="550 " + odd * 200, attempts=9, retryable=True, failed_at=T0),
        CertificateIssued(job_id="copied", batch_no=3, userid=3, email="l3@exämple.org", url="https://x/c.pdf",
                          object_key="c/3.pdf", size=36_000, code="ABCD-1234", sha256="0" * 64,
                          template_id="default", template_version=2, backend="local", issued_at=T0,
                          holder_name=odd, course_name="Fire Safety", completion_date=date(2026, 2, 28)),
        None,
    ]
    return events


async def staged(conn: Any, built: recipients.Built | recipients.Copied) -> dict[str, list[tuple]]:
    """What the staging tables hold once ``built`` is copied into them (in a transaction rolled back after)."""
    assert built.outcomes and built.pending
    held = {}
    async with conn.cursor() as cur:
        await cur.execute("BEGIN")
        try:
            await recipients._copy(cur, recipients._COPY_OUTCOMES, recipients._OUTCOME_TYPES, built.outcomes)
            await recipients._copy(cur, recipients._COPY_PENDING, recipients._PENDING_TYPES, built.pending)
            for table in ("incoming_outcomes", "incoming_pending"):
                await cur.execute(sql.SQL("SELECT * FROM pg_temp.{} ORDER BY 1, 2").format(sql.Identifier(table)))
                held[table] = await cur.fetchall()
        finally:
            await cur.execute("ROLLBACK")
    return held


async def applied(conn: Any, events: list[Event | None], formatted: recipients.Copied | None) -> dict[str, list[tuple]]:
    """The read models after one poll: ``formatted`` (a replay's), or else ``events`` applied as the live projector
    does."""
    live = [(Position("outcomes", 0, i, T0), e) for i, e in enumerate(events) if e is not None]
    async with conn.transaction(), conn.cursor() as cur:
        await recipients.apply(cur, [] if formatted else live, formatted)
    async with conn.cursor() as cur:
        await cur.execute("SELECT job_id, userid, email, status, run, batch_no, attempts, retryable, error_message,"
                          " provider, provider_message_id, message_id, certificate_url, certificate_code,"
                          " certificate_sha256, timesent, certificate_holder, certificate_course,"
                          " certificate_completed FROM job_recipients ORDER BY 1, 2")
        rows = await cur.fetchall()
        await cur.execute("SELECT job_id, succeeded, failed, suppressed, status, timestarted FROM jobs ORDER BY 1")
        return {"job_recipients": rows, "jobs": await cur.fetchall()}


def test_rows_copied_as_formatted_bytes_are_the_rows_copied_one_by_one(settings_factory) -> None:
    settings = settings_factory()

    async def run() -> None:
        events = log()  # once: the schemas' samples take their times from the clock
        built, others = recipients.build(events)
        assert others == [len(events) - 1]  # only the undecodable record is left to the projector
        formatted = recipients.copied(built)
        assert isinstance(formatted.outcomes, bytes) and isinstance(formatted.pending, bytes)
        one = await read_models.open_read_models(settings, f"{settings.projection_schema}_rows")
        other = await read_models.open_read_models(settings, f"{settings.projection_schema}_bytes")
        try:
            by_row, by_bytes = await staged(one, built), await staged(other, formatted)
            assert len(by_row["incoming_outcomes"]) == len(built.outcomes) > 10
            assert len(by_row["incoming_pending"]) == len(built.pending) >= 39
            assert by_bytes == by_row
            assert await applied(other, [], formatted) == await applied(one, events, None)
        finally:
            await one.close()
            await other.close()

    asyncio.run(run())


def test_nothing_to_copy_is_none() -> None:
    built, _ = recipients.build([RecipientSent(job_id="j", batch_no=0, userid=1, email="l1@example.org",
                                               provider="smtp", message_id="<m>", attempts=1, sent_at=T0)])
    formatted = recipients.copied(built)
    assert formatted.pending is None and formatted.outcomes is not None
    assert formatted.outcomes.startswith(b"PGCOPY\n\xff\r\n\x00") and formatted.outcomes.endswith(b"\xff\xff")


def test_rows_formatted_apart_keep_their_text_in_a_database_not_in_utf8(infra: Infra) -> None:
    # The decoder process formats text as UTF-8 without a connection to ask; the projector's connection must
    # then speak UTF-8 whatever the database's encoding, or a LATIN1 database stores "zoÃ«" without a word.
    events: list[Event | None] = [
        BatchDispatched(job_id="latin", batch_no=0, batch_count=1, type="email", company_id=7, route="local",
                        provider="smtp", template_id="t", dispatched_at=T0,
                        recipients=[Recipient(userid=1, email="zoë@exämple.org")]),
        RecipientSent(job_id="latin", batch_no=0, userid=2, email="åsa@exämple.org", provider="smtp",
                      message_id="<ñ@exämple.org>", attempts=1, sent_at=T0)]
    built, _ = recipients.build(events)

    async def run(url: str) -> list[tuple]:
        conn = await read_models.open_read_models(Settings(environment="test", database_url=url), "latin")
        try:
            async with conn.transaction(), conn.cursor() as cur:
                await recipients.apply(cur, [], recipients.copied(built))
            cur = await conn.execute("SELECT userid, email, message_id FROM job_recipients ORDER BY 1")
            return await cur.fetchall()
        finally:
            await conn.close()

    async def on_a_plain_connection(url: str) -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn, conn.cursor() as cur:
            assert conn.info.encoding != "utf-8"  # the database's own
            with pytest.raises(ValueError, match="formatted as UTF-8"):
                await recipients.apply(cur, [], recipients.copied(built))

    with fresh_database(infra.database_url, encoding="LATIN1") as url:
        assert asyncio.run(run(url)) == [(1, "zoë@exämple.org", None), (2, "åsa@exämple.org", "<ñ@exämple.org>")]
        asyncio.run(on_a_plain_connection(url))
