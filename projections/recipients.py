"""job_recipients: one row per learner of a job, pending until its outcome arrives (the original design's table).

Written in bulk because a 50,000-recipient job brings 50,000 outcomes: each poll's rows are copied into
session-local staging tables (``COPY ... FROM STDIN`` in binary, formatted by psycopg's C code) and applied by
one statement per kind. Sending the same rows as 19 array parameters cost ~18 µs of projector CPU per outcome in
psycopg's Python array dumper, more than everything else the projector did (bench/replay.py). A row's first
terminal outcome raises the job's counters; a repeated outcome changes nothing, so replays and re-deliveries
never count twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from psycopg import AsyncCursor, postgres, sql
from psycopg._copy_base import BinaryFormatter  # private: psycopg is pinned below 3.4 (pyproject.toml)
from psycopg.adapt import Transformer
from psycopg.pq import Format

from projections.base import Applied
from schemas.events import (
    BatchDispatched,
    CertificateIssued,
    Event,
    RecipientBounced,
    RecipientComplained,
    RecipientDelivered,
    RecipientFailed,
    RecipientSent,
)
from schemas.events.suppression import RecipientSuppressed

DDL = """
CREATE TABLE IF NOT EXISTS job_recipients (
    job_id              text   NOT NULL,
    userid              bigint NOT NULL,
    email               text   NOT NULL,
    status              text   NOT NULL,   -- pending | sent | failed | issued | suppressed
    run                 int    NOT NULL DEFAULT 0,
    batch_no            int    NOT NULL,
    attempts            int    NOT NULL DEFAULT 0,
    retryable           boolean,
    error_message       text,
    provider            text,
    provider_message_id text,
    message_id          text,
    certificate_url     text,
    certificate_code    text,
    certificate_sha256  text,
    timesent            timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, userid)
);
ALTER TABLE job_recipients ADD COLUMN IF NOT EXISTS delivery text;  -- delivered | bounced | complained
ALTER TABLE job_recipients ADD COLUMN IF NOT EXISTS delivery_detail text;
-- What an issued certificate says (CertificateIssued), for /verify: never read back from the PDF.
ALTER TABLE job_recipients ADD COLUMN IF NOT EXISTS certificate_holder text;
ALTER TABLE job_recipients ADD COLUMN IF NOT EXISTS certificate_course text;
ALTER TABLE job_recipients ADD COLUMN IF NOT EXISTS certificate_completed date;
CREATE INDEX IF NOT EXISTS job_recipients_status ON job_recipients (job_id, status);
CREATE UNIQUE INDEX IF NOT EXISTS job_recipients_code ON job_recipients (certificate_code)
    WHERE certificate_code IS NOT NULL;
"""

# Staging tables, one set per connection, emptied at every commit. The projector applies a poll inside one
# transaction, so rows copied in are seen by the statement that reads them and gone before the next poll.
# Created with the read models (projections.read_models), once per connection: created again
# by every poll, they cost two catalog look-ups and two notices per transaction.
STAGING = """
CREATE TEMP TABLE IF NOT EXISTS incoming_pending (
    job_id text, userid bigint, email text, run int, batch_no int
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS incoming_outcomes (
    job_id text, userid bigint, email text, status text, run int, batch_no int, attempts int, retryable boolean,
    error_message text, provider text, provider_message_id text, message_id text, certificate_url text,
    certificate_code text, certificate_sha256 text, timesent timestamptz, certificate_holder text,
    certificate_course text, certificate_completed date
) ON COMMIT DELETE ROWS;
"""
_PENDING_TYPES = ("text", "int8", "text", "int4", "int4")
_OUTCOME_TYPES = ("text", "int8", "text", "text", "int4", "int4", "int4", "bool", "text", "text", "text", "text",
                  "text", "text", "text", "timestamptz", "text", "text", "date")

_PENDING = """
INSERT INTO job_recipients (job_id, userid, email, status, run, batch_no)
SELECT t.job_id, t.userid, t.email, 'pending', t.run, t.batch_no
FROM pg_temp.incoming_pending t
ON CONFLICT (job_id, userid) DO NOTHING
"""

# A retry run puts the learners it serves again back to pending, and takes them off the failed count.
_RETRY_PENDING = """
WITH incoming AS (
    SELECT * FROM unnest(%s::text[], %s::bigint[], %s::int[], %s::int[]) AS t(job_id, userid, run, batch_no)
), reset AS (
    UPDATE job_recipients r
    SET status = 'pending', run = i.run, batch_no = i.batch_no, error_message = NULL, retryable = NULL,
        updated_at = now()
    FROM incoming i
    WHERE r.job_id = i.job_id AND r.userid = i.userid AND r.status = 'failed' AND r.run < i.run
    RETURNING r.job_id
)
UPDATE jobs j SET failed = j.failed - c.n, updated_at = now()  -- the status follows the runs (projections.jobs)
FROM (SELECT job_id, count(*) AS n FROM reset GROUP BY job_id) c
WHERE j.job_id = c.job_id
"""

_OUTCOME_COLUMNS = ("job_id", "userid", "email", "status", "run", "batch_no", "attempts", "retryable",
                    "error_message", "provider", "provider_message_id", "message_id", "certificate_url",
                    "certificate_code", "certificate_sha256", "timesent", "certificate_holder", "certificate_course",
                    "certificate_completed")

# A job's counters raised by its learners' changes ({counts}: job_id, ok, bad, sup, first), the job's row made
# when its JobAccepted has not been applied yet.
_COUNTERS = """
INSERT INTO jobs AS j (job_id, succeeded, failed, suppressed, status, timestarted)
SELECT job_id, ok, bad, sup, 'running', first FROM {counts}
ON CONFLICT (job_id) DO UPDATE SET
    succeeded = j.succeeded + EXCLUDED.succeeded,
    failed = j.failed + EXCLUDED.failed,
    suppressed = j.suppressed + EXCLUDED.suppressed,
    status = CASE WHEN j.status = 'accepted' THEN 'running' ELSE j.status END,
    timestarted = LEAST(j.timestarted, EXCLUDED.timestarted),
    updated_at = now()
"""

# Each incoming row's previous state is looked up by its key (a subquery per row, answered by the primary key),
# not by joining job_recipients: a table a replay is rebuilding has no statistics yet, and the planner read the
# whole table into a hash join on every poll, so each poll cost more than the one before (polls of 5,000 into
# a fresh schema: 9.0 µs of Postgres per outcome on average over 200,000, 6.3 µs this way, flat; a
# 1,000,000-learner log would scan up to a million rows per poll). The lookups are all made before
# the first row is inserted (the ORDER BY sorts them first): into an empty table the planner scans instead of
# using the index, and a scan made while the statement inserts would read every row inserted so far (1.2 s for
# a first poll of 5,000). Sorted by key, the inserts also walk the primary key in order. A learner without a
# row gets NULL, as the join's missing row did: no previous state.

# Only a row that is pending (or from an earlier run) takes an outcome. The job counters move by the change
# from each row's previous status (read in the same snapshot) to its new one, so they stay right whatever
# order the topics are read in, and a repeated outcome changes nothing.
_OUTCOMES = """
WITH incoming AS (
    SELECT t.*, (SELECT r.status FROM job_recipients r WHERE r.job_id = t.job_id AND r.userid = t.userid) AS previous
    FROM pg_temp.incoming_outcomes t
    ORDER BY t.job_id, t.userid
), changed AS (
    INSERT INTO job_recipients AS r (job_id, userid, email, status, run, batch_no, attempts, retryable,
        error_message, provider, provider_message_id, message_id, certificate_url, certificate_code,
        certificate_sha256, timesent, certificate_holder, certificate_course, certificate_completed)
    SELECT job_id, userid, email, status, run, batch_no, attempts, retryable, error_message, provider,
           provider_message_id, message_id, certificate_url, certificate_code, certificate_sha256, timesent,
           certificate_holder, certificate_course, certificate_completed
    FROM incoming
    ON CONFLICT (job_id, userid) DO UPDATE SET
        status = EXCLUDED.status, run = EXCLUDED.run, batch_no = EXCLUDED.batch_no, attempts = EXCLUDED.attempts,
        retryable = EXCLUDED.retryable, error_message = EXCLUDED.error_message, provider = EXCLUDED.provider,
        provider_message_id = EXCLUDED.provider_message_id, message_id = EXCLUDED.message_id,
        certificate_url = EXCLUDED.certificate_url, certificate_code = EXCLUDED.certificate_code,
        certificate_sha256 = EXCLUDED.certificate_sha256, timesent = EXCLUDED.timesent,
        certificate_holder = EXCLUDED.certificate_holder, certificate_course = EXCLUDED.certificate_course,
        certificate_completed = EXCLUDED.certificate_completed, updated_at = now()
    WHERE r.status = 'pending' OR r.run < EXCLUDED.run
    RETURNING r.job_id, r.userid, r.status, r.timesent
), counts AS (
    SELECT c.job_id,
           count(*) FILTER (WHERE c.status IN ('sent', 'issued'))
             - count(*) FILTER (WHERE p.previous IN ('sent', 'issued')) AS ok,
           count(*) FILTER (WHERE c.status = 'failed') - count(*) FILTER (WHERE p.previous = 'failed') AS bad,
           count(*) FILTER (WHERE c.status = 'suppressed') - count(*) FILTER (WHERE p.previous = 'suppressed') AS sup,
           min(c.timesent) AS first
    FROM changed c LEFT JOIN incoming p USING (job_id, userid)
    GROUP BY c.job_id
)
""" + _COUNTERS.format(counts="counts")

# Rows of learners that have none yet (Written.fresh) go straight into job_recipients (_COPY_FRESH): no staging
# table, no lookup of a previous state, no ON CONFLICT. Their jobs' counters, counted where the rows were built,
# go up by this.
_FRESH_COUNTERS = _COUNTERS.format(
    counts="unnest(%s::text[], %s::int[], %s::int[], %s::int[], %s::timestamptz[]) AS t(job_id, ok, bad, sup, first)")


# A provider's later report about a sent message. The most severe report stands (complained > bounced >
# delivered); the job's counters move by the change, so a report the provider repeats counts once.
_REPORTS = """
WITH incoming AS (
    SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[]) AS t(job_id, userid, delivery, detail)
), previous AS (
    SELECT r.job_id, r.userid, r.delivery FROM job_recipients r JOIN incoming i USING (job_id, userid)
), changed AS (
    UPDATE job_recipients r SET delivery = i.delivery, delivery_detail = i.detail, updated_at = now()
    FROM incoming i
    WHERE r.job_id = i.job_id AND r.userid = i.userid
      AND array_position(ARRAY['delivered', 'bounced', 'complained'], i.delivery)
          > coalesce(array_position(ARRAY['delivered', 'bounced', 'complained'], r.delivery), 0)
    RETURNING r.job_id, r.userid, r.delivery
), counts AS (
    SELECT c.job_id,
           count(*) FILTER (WHERE c.delivery = 'delivered') - count(*) FILTER (WHERE p.delivery = 'delivered') AS d,
           count(*) FILTER (WHERE c.delivery = 'bounced') - count(*) FILTER (WHERE p.delivery = 'bounced') AS b,
           count(*) FILTER (WHERE c.delivery = 'complained') - count(*) FILTER (WHERE p.delivery = 'complained') AS c
    FROM changed c JOIN previous p USING (job_id, userid)
    GROUP BY c.job_id
)
UPDATE jobs j SET delivered = j.delivered + counts.d, bounced = j.bounced + counts.b,
                  complained = j.complained + counts.c, updated_at = now()
FROM counts WHERE j.job_id = counts.job_id
"""
_SEVERITY = {"delivered": 1, "bounced": 2, "complained": 3}


def _outcome_row(event: Event) -> tuple | None:
    """The job_recipients row of a recipient's final outcome (sent, failed, issued); None for other events."""
    if isinstance(event, RecipientSent):
        return (event.job_id, event.userid, event.email, "sent", event.run, event.batch_no, event.attempts, None,
                None, event.provider, event.provider_message_id, event.message_id, None, None, None, event.sent_at,
                None, None, None)
    if isinstance(event, RecipientFailed):
        return (event.job_id, event.userid, event.email, "failed", event.run, event.batch_no, event.attempts,
                event.retryable, event.error[:2000], event.provider, None, None, None, None, None, event.failed_at,
                None, None, None)
    if isinstance(event, RecipientSuppressed):  # not sent: the reason, as a failure's error would be
        return (event.job_id, event.userid, event.email, "suppressed", event.run, event.batch_no, 0, False,
                event.reason, None, None, None, None, None, None, event.suppressed_at, None, None, None)
    if isinstance(event, CertificateIssued):
        # message_id/error_message: the email telling the learner, when the job asked for one.
        return (event.job_id, event.userid, event.email, "issued", event.run, event.batch_no, event.attempts, None,
                event.email_error, event.backend, None, event.email_message_id, event.url, event.code, event.sha256,
                event.issued_at, event.holder_name, event.course_name, event.completion_date)
    return None


def _outcome_wins(new: tuple, kept: tuple | None) -> bool:
    """Of two outcomes for one learner in one poll, whether ``new`` (read later) is what applying them one by one
    would leave: a row takes an outcome while pending, and afterwards only one from a later run."""
    return kept is None or new[4] > kept[4]


_COPY_PENDING = sql.SQL("COPY pg_temp.incoming_pending FROM STDIN (FORMAT BINARY)")
_COPY_OUTCOMES = sql.SQL("COPY pg_temp.incoming_outcomes FROM STDIN (FORMAT BINARY)")
# Rows of learners that have none yet (Written.fresh): straight into job_recipients, no staging table.
_COPY_FRESH = sql.SQL("COPY job_recipients ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in _OUTCOME_COLUMNS))


async def _copy(cur: AsyncCursor, statement: sql.SQL | sql.Composed, types: tuple[str, ...],
                rows: Iterable[tuple] | bytes) -> None:
    """``rows`` copied by ``statement`` (a binary COPY FROM STDIN); already in COPY's binary format when bytes
    (``copied``)."""
    async with cur.copy(statement) as copy:
        if isinstance(rows, bytes):
            await copy.write(rows)
            return
        copy.set_types(list(types))
        for row in rows:
            await copy.write_row(row)


def _binary(types: tuple[str, ...], rows: Sequence[tuple]) -> bytes | None:
    """``rows`` in COPY's binary format, whole (signature, rows, trailer), as ``_copy`` sends them row by row:
    the same formatter and the same dumpers, looked up by type name without a connection (built-in types; text
    is dumped as UTF-8, the client encoding read_models.open_read_models sets). None when there are no rows."""
    if not rows:
        return None
    transformer = Transformer()
    transformer.set_dumper_types([postgres.types.get_oid(name) for name in types], Format.BINARY)
    formatter = BinaryFormatter(transformer)
    data = bytearray()
    for row in rows:
        data += formatter.write_row(row)
    data += formatter.end()
    return bytes(data)


@dataclass
class _Rows:
    """A poll's rows for job_recipients, by statement."""

    pending: list[tuple] = field(default_factory=list)
    retried: list[tuple] = field(default_factory=list)
    reports: dict[tuple[str, int], tuple] = field(default_factory=dict)
    outcomes: dict[tuple[str, int], tuple] = field(default_factory=dict)


_REPORT_KINDS: tuple[tuple[type[Event], str], ...] = (
    (RecipientDelivered, "delivered"), (RecipientBounced, "bounced"), (RecipientComplained, "complained"))


def _report_kind(event: Event) -> str | None:
    for cls, kind in _REPORT_KINDS:
        if isinstance(event, cls):
            return kind
    return None


@dataclass(frozen=True, slots=True)
class Built:
    """Rows of a poll built apart from its other events (by ``build``, in a replay's decoder process): the
    outcomes' rows, one per learner, and the first runs' pending rows, in log order; ``fresh``: outcome rows of
    learners that have no row yet (Written.fresh), which the outcomes then do not hold."""

    outcomes: list[tuple]
    pending: list[tuple]
    fresh: list[tuple] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Copied:
    """``Built`` rows in COPY's binary format (``copied``), None where there are none; ``counts``: what the fresh
    rows add to their jobs' counters, per job (job_id, succeeded, failed, suppressed, first timesent).

    A replay's decoder process sends these: the rows crossed the process boundary as tuples, pickled there and
    unpickled in the projector (~12 and ~7 ms per 5,000 outcome rows), which then formatted them for COPY one
    write_row at a time (~20 ms per 5,000 in bench/replay.py's timed replays), all while the commit waited. The
    same formatting in the decoder process takes ~6 ms, and the projector only forwards the bytes."""

    outcomes: bytes | None
    pending: bytes | None
    fresh: bytes | None = None
    counts: tuple[list, ...] = ()


def copied(built: Built) -> Copied:
    """``built``'s rows as ``apply`` copies them, formatted already."""
    return Copied(_binary(_OUTCOME_TYPES, built.outcomes), _binary(_PENDING_TYPES, built.pending),
                  _binary(_OUTCOME_TYPES, built.fresh), _counts(built.fresh))


_COUNTED = {"sent": 1, "issued": 1, "failed": 2, "suppressed": 3}  # the place of each status in a job's counts


def _counts(rows: Sequence[tuple]) -> tuple[list, ...]:
    """What rows new to job_recipients add to their jobs' counters, as _FRESH_COUNTERS takes them: a column each
    of job_id, succeeded, failed, suppressed and the earliest timesent (what _OUTCOMES counts of a row with no
    previous state)."""
    by_job: dict[str, list] = {}
    job, counts = None, []
    for row in rows:
        if row[0] != job:
            job = row[0]
            counts = by_job.setdefault(job, [job, 0, 0, 0, row[15]])
        counts[_COUNTED[row[3]]] += 1
        if row[15] < counts[4]:
            counts[4] = row[15]
    return tuple(list(column) for column in zip(*by_job.values(), strict=True)) if by_job else ()


def _first_run(event: Event) -> BatchDispatched | None:
    return event if isinstance(event, BatchDispatched) and event.run == 0 else None


class Written:
    """Learners whose job_recipients row earlier calls of ``build`` in this run write (an outcome's or a pending
    row), so that their first-run pending rows, which would change nothing (``ON CONFLICT DO NOTHING``), are
    left out.

    Sound because pieces commit one at a time, in the order they were built, and after a lost connection the
    projector reads and commits everything after its stored offsets again in that order: a row noted here is
    committed before any later piece's rows are. A replay reads the batches topic last, so without this every
    learner's pending row went to Postgres only to be found there (50,000 no-op rows at the end of a
    50,000-learner replay, none of it overlapped). Bounded: past ``limit`` learners nothing more is noted, and
    their pending rows go as before.

    ``fresh``: job_recipients was empty when the first call's rows were committed and only these calls' rows go
    into it (a replay into a schema it dropped: offload/replay.py), so a learner not noted has no row, and
    ``build`` sends its outcome as a fresh row, copied straight into the table (in bench/replay.py 6.4 µs of
    Postgres per outcome, against 11.6-15.4 through the staging table and its upsert). A note refused at the
    limit ends it: from then on a learner not noted may have a row. A row noted but never committed (a lost
    connection) only sends that learner's outcome the careful way."""

    def __init__(self, limit: int = 2_000_000, *, fresh: bool = False) -> None:
        self.limit = limit
        self.count = 0
        self.fresh = fresh
        self._users: dict[str, set[int]] = {}

    def note(self, job_id: str, userid: int) -> None:
        users = self._users.get(job_id)
        if users is not None and userid in users:
            return
        if self.count >= self.limit:
            self.fresh = False
            return
        self._users.setdefault(job_id, set()).add(userid)
        self.count += 1

    def has(self, job_id: str, userid: int) -> bool:
        users = self._users.get(job_id)
        return users is not None and userid in users

    def claim(self, outcomes: dict[tuple[str, int], tuple]) -> tuple[dict[tuple[str, int], tuple], list[tuple]]:
        """``outcomes``' learners noted, and their rows split: those that take the upsert, and the fresh ones
        (learners not noted before, while ``fresh``). One pass, each job's set looked up once: a replay's
        decoder process runs this over every outcome."""
        kept: dict[tuple[str, int], tuple] = {}
        fresh: list[tuple] = []
        job, users = None, set()
        for key, row in outcomes.items():
            if key[0] != job:
                job, users = key[0], self._users.setdefault(key[0], set())
            if key[1] in users:
                kept[key] = row
                continue
            if self.count < self.limit:
                users.add(key[1])
                self.count += 1
            else:
                self.fresh = False  # not noted: from here on, a learner not noted may have a row
            if self.fresh:
                fresh.append(row)
            else:
                kept[key] = row
        return kept, fresh


def build(events: Iterable[Event | None], written: Written | None = None) -> tuple[Built, list[int]]:
    """The rows of the events that only job_recipients reads, outcomes and first-run BatchDispatched
    (tests/unit/test_built_rows.py holds the other read models to that), and the places of the others (None:
    a record that did not decode), which go to every read model as events. ``written``: the learners earlier
    calls' outcomes write, noted and used across the calls (see Written).

    A replay builds these in a decoder process of its own (projections/decoder.py): they are nearly all of a
    log, and rows cross a process boundary for a fraction of what decoded events cost."""
    outcomes: dict[tuple[str, int], tuple] = {}
    pending: list[tuple] = []
    others: list[int] = []
    for i, event in enumerate(events):
        if event is None:
            others.append(i)
        elif (row := _outcome_row(event)) is not None:
            key = (row[0], row[1])
            if _outcome_wins(row, outcomes.get(key)):
                outcomes[key] = row
        elif (batch := _first_run(event)) is not None:
            rows = _pending_rows(batch)
            pending.extend(rows if written is None else (r for r in rows if not written.has(r[0], r[1])))
        else:
            others.append(i)
    if written is None:
        return Built(list(outcomes.values()), pending), others
    # Noted after the loop: within one call, outcomes and pending rows share a transaction.
    if written.fresh and pending and outcomes:
        # A pending row of a learner whose outcome is in this call changes nothing (the outcome takes a pending
        # row's place whole) and is left out, so that the outcome's row can be fresh.
        pending = [r for r in pending if (r[0], r[1]) not in outcomes]
    outcomes, fresh = written.claim(outcomes)
    for row in pending:
        written.note(row[0], row[1])
    return Built(list(outcomes.values()), pending, fresh), others


def _pending_rows(event: BatchDispatched) -> Iterator[tuple]:
    return ((event.job_id, r.userid, r.email, event.run, event.batch_no) for r in event.recipients)


def _rows(events: Sequence[Applied], built_apart: bool) -> _Rows:
    """A poll's rows by statement; ``built_apart``: ``build`` made the rows of its outcomes and first-run batches,
    which ``events`` then do not hold (``apply`` copies them as ``copied`` formatted them).
    Outcomes, by far the most events, are tried first: tried last, each went through every other test (and
    built a union type) first; over bench.replay's 50,000-learner log this took 2.0 us per event, now 1.5-1.7."""
    rows = _Rows()
    for _, event in events:
        if (row := _outcome_row(event)) is not None:
            assert not built_apart, "outcomes built apart, and one among the events too"
            key = (row[0], row[1])
            if _outcome_wins(row, rows.outcomes.get(key)):
                rows.outcomes[key] = row
        elif isinstance(event, BatchDispatched) and event.run > 0:
            rows.retried.extend((event.job_id, r.userid, event.run, event.batch_no) for r in event.recipients)
        elif isinstance(event, BatchDispatched):
            assert not built_apart, "first-run batches built apart, and one among the events too"
            rows.pending.extend(_pending_rows(event))
        elif (kind := _report_kind(event)) is not None:
            assert isinstance(event, RecipientDelivered | RecipientBounced | RecipientComplained)
            key = (event.job_id, event.userid)
            if key not in rows.reports or _SEVERITY[kind] > _SEVERITY[rows.reports[key][2]]:
                rows.reports[key] = (event.job_id, event.userid, kind, (event.detail or "")[:2000] or None)
    return rows


async def apply(cur: AsyncCursor, events: Sequence[Applied], built: Copied | None = None) -> None:
    """Apply a poll's events, and the rows ``build`` made of the rest of it, formatted by ``copied`` (a replay's
    decoder process); must run inside a transaction (the staging tables empty at commit), on a connection that
    has the staging tables (read_models made them)."""
    if built is not None and cur.connection.info.encoding != "utf-8":
        # Its text was formatted as UTF-8 (copied): sent on another client encoding it would be stored garbled.
        raise ValueError(f"rows formatted as UTF-8 on a {cur.connection.info.encoding} connection: open it with "
                         "read_models.open_read_models")
    rows = _rows(events, built_apart=built is not None)
    pending: Sequence[tuple] | bytes | None = rows.pending if built is None else built.pending
    outcomes: Iterable[tuple] | bytes | None = (rows.outcomes.values() or None) if built is None else built.outcomes
    if pending:
        await _copy(cur, _COPY_PENDING, _PENDING_TYPES, pending)
        await cur.execute(_PENDING)
    if rows.retried:
        await cur.execute(_RETRY_PENDING, [list(col) for col in zip(*rows.retried, strict=True)])
    if outcomes:
        await _copy(cur, _COPY_OUTCOMES, _OUTCOME_TYPES, outcomes)
        await cur.execute(_OUTCOMES)
    if built is not None and built.fresh:  # learners with no row yet: no key is also among the outcomes above
        await _copy(cur, _COPY_FRESH, _OUTCOME_TYPES, built.fresh)
        await cur.execute(_FRESH_COUNTERS, built.counts)
    if rows.reports:  # last: a report follows its outcome in the log, and may share its poll (a replay)
        await cur.execute(_REPORTS, [list(col) for col in zip(*rows.reports.values(), strict=True)])
