"""The values the worker keeps in its Faust tables, as declared types with the logic that reads them.

| table            | key                  | value                                                          |
|------------------|----------------------|----------------------------------------------------------------|
| known-jobs       | job id               | KnownJob: ``accepted``, ``rejected`` or ``waiting`` (for its   |
|                  |                      | budget, then let go by the budget timer without changing this  |
|                  |                      | note) and the company that holds the id                        |
| budget-waits     | job id               | BudgetWait (streams.budget_wait)                               |
| company-settings | company id           | the CompanySettingsChanged event's own JSON (schemas/ decodes) |
| batch-progress   | job:run:batch        | BatchProgress                                                  |
| job-progress     | job id               | JobProgress                                                    |
|                  | job:locations:run    | {"batches": [(partition, offset)]} of a run, in batch order    |
| job-failures     | job:run:batch        | BatchFailures                                                  |
| cancelled-jobs   | job id               | ``True``                                                       |
| callbacks        | job id               | CallbackQueue                                                  |
| suppressions     | company:userid:scope | streams.suppressions.SuppressionEntry                          |

Tables hold each value's ``to_dict()`` (JSON in the changelog) and code reads it back through ``from_dict()``,
which refuses a key it does not know, so a misspelt field fails loudly instead of reading as empty.

Changelog compatibility: a worker of this code resumes from changelogs written before these types existed.
Every ``to_dict()`` writes the same JSON the old untyped code wrote, except three. JobProgress: a run's reports
are written compact (``reported``: a bit per batch and the summed counts) instead of one entry per batch
(``done``), and new runs' locations go under their own key; ``from_dict()`` still reads ``done`` and
``locations`` in the value. CallbackQueue keeps run 0's reports in the same compact form (``reported``).
KnownJob: the old code stored the outcome alone, a plain string, which ``from_stored()`` still reads (the company
is then unknown).
BatchFailures now spells its fields out (``partition``, ``offset``, ``failures``); its ``from_dict()`` also reads
the old one-letter form (``p``, ``o``, ``f``). Keys that the old code added only when first needed (``done``,
``included``, ``locations``, ``retry_pending``, ...) are optional in the stored form and read as empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, cast, get_args

IntakeOutcome = Literal["accepted", "rejected", "waiting"]  # waiting: for the budget
BatchStage = Literal["started", "done"]

Stored = Mapping[str, Any]


def _check_keys(kind: str, raw: Stored, allowed: Iterable[str]) -> None:
    unknown = set(raw) - set(allowed)
    if unknown:
        raise ValueError(f"{kind}: unknown field(s) {sorted(unknown)} in stored value")


def _lazy(raw: Stored, key: str) -> Mapping[str, Any]:
    """A mapping the old writer added only when it first put something in it: absent means empty."""
    value: Mapping[str, Any] = raw.get(key, {})
    return value


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _failures(pairs: Iterable[Iterable[Any]]) -> tuple[tuple[int, bool], ...]:
    return tuple((int(userid), bool(retryable)) for userid, retryable in pairs)


# --- known-jobs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnownJob:
    """What the route agent did with the first request for a job id, and for which company: a later request for
    the id from the same company is Moodle resubmitting; from another company it is that company's own job."""

    outcome: IntakeOutcome
    company_id: int | None  # None: noted by a worker before the company was kept (then treated as the same)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "company_id": self.company_id}

    @classmethod
    def from_stored(cls, raw: str | Stored) -> KnownJob:
        if isinstance(raw, str):  # written before the company was kept
            return cls(_outcome(raw), None)
        _check_keys("known-jobs", raw, ("outcome", "company_id"))
        return cls(_outcome(raw["outcome"]), _optional_int(raw["company_id"]))

    def held_by_another(self, company_id: int | None) -> bool:
        """True when the id belongs to a company other than ``company_id`` (both known)."""
        return self.company_id is not None and company_id is not None and company_id != self.company_id


def _outcome(raw: str) -> IntakeOutcome:
    if raw not in get_args(IntakeOutcome):
        raise ValueError(f"known-jobs: unknown outcome {raw!r}")
    return cast(IntakeOutcome, raw)


# --- batch-progress --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Where one batch stands (streams.agents.batches): started, with where its outcomes begin in the log; or
    done, with what it reported, so a batch seen again only repeats its BatchCompleted."""

    stage: BatchStage
    partition: int | None = None  # started: the outcomes partition and the log end when the batch started
    offset: int | None = None
    succeeded: int = 0  # done: what BatchCompleted said
    fell_back: bool = False
    failures: tuple[tuple[int, bool], ...] = ()  # (userid, retryable)
    sent_by: tuple[tuple[str, int], ...] = ()  # done: learners served per provider or storage backend
    pacing: str | None = None  # done: what paced the batch's sends, when anything did
    suppressed: int = 0  # done: learners held back by the suppression list

    @classmethod
    def started(cls, partition: int, offset: int) -> BatchProgress:
        return cls("started", partition=partition, offset=offset)

    @classmethod
    def done(cls, succeeded: int, fell_back: bool, failures: Iterable[tuple[int, bool]],
             sent_by: Mapping[str, int] | None = None, pacing: str | None = None,
             suppressed: int = 0) -> BatchProgress:
        return cls("done", succeeded=succeeded, fell_back=fell_back, failures=tuple(failures),
                   sent_by=tuple(sorted((sent_by or {}).items())), pacing=pacing, suppressed=suppressed)

    def to_dict(self) -> dict[str, Any]:
        if self.stage == "started":
            return {"state": "started", "partition": self.partition, "offset": self.offset}
        out: dict[str, Any] = {"state": "done", "succeeded": self.succeeded, "fell_back": self.fell_back,
                               "failures": [[userid, retryable] for userid, retryable in self.failures]}
        if self.sent_by:
            out["sent_by"] = dict(self.sent_by)
        if self.pacing is not None:
            out["pacing"] = self.pacing
        if self.suppressed:
            out["suppressed"] = self.suppressed
        return out

    @classmethod
    def from_dict(cls, raw: Stored) -> BatchProgress:
        if raw["state"] == "started":
            _check_keys("batch-progress", raw, ("state", "partition", "offset"))
            return cls.started(int(raw["partition"]), int(raw["offset"]))
        if raw["state"] == "done":
            _check_keys("batch-progress", raw, ("state", "succeeded", "fell_back", "failures", "sent_by", "pacing",
                                                "suppressed"))
            # sent_by, pacing and suppressed came later: a batch done before them served nobody we can price,
            # and held nobody back.
            sent_by = _lazy(raw, "sent_by")
            return cls.done(int(raw["succeeded"]), bool(raw["fell_back"]), _failures(raw["failures"]),
                            {str(k): int(v) for k, v in sent_by.items()}, raw.get("pacing"),
                            int(raw.get("suppressed", 0)))
        raise ValueError(f"batch-progress: unknown state {raw['state']!r}")


# --- job-failures ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchFailures:
    """Who failed in one batch of one run, and where that batch's BatchDispatched is in the log (a retry reads
    the learners' data back from it). Kept apart from JobProgress so that a job's progress value stays small."""

    source_partition: int | None  # None when the BatchCompleted did not say (then a retry cannot serve them)
    source_offset: int | None
    failures: tuple[tuple[int, bool], ...]  # (userid, retryable)

    def to_dict(self) -> dict[str, Any]:
        return {"partition": self.source_partition, "offset": self.source_offset,
                "failures": [[userid, retryable] for userid, retryable in self.failures]}

    @classmethod
    def from_dict(cls, raw: Stored) -> BatchFailures:
        if "p" in raw:  # written before this type existed: {"p": partition, "o": offset, "f": [[userid, retryable]]}
            _check_keys("job-failures", raw, ("p", "o", "f"))
            return cls(_optional_int(raw["p"]), _optional_int(raw["o"]), _failures(raw["f"]))
        _check_keys("job-failures", raw, ("partition", "offset", "failures"))
        return cls(_optional_int(raw["partition"]), _optional_int(raw["offset"]), _failures(raw["failures"]))


def failures_key(job_id: str, run: int, batch_no: int) -> str:
    return f"{job_id}:{run}:{batch_no}"


# --- job-progress ----------------------------------------------------------------------------------------------


class Failure(NamedTuple):
    retryable: bool
    run: int
    batch_no: int


def choose(failed: Mapping[int, Failure], *, only_retryable: bool) -> dict[int, Failure]:
    """The learners a retry serves: every one still failed, or only those whose failure may pass next time."""
    return {u: f for u, f in failed.items() if f.retryable or not only_retryable}


_JOB_PROGRESS_KEYS = ("total", "runs", "done", "reported", "locations", "included", "completed_runs", "cancelled",
                      "retry_pending", "touched", "served")


@dataclass(slots=True)
class RunReports:
    """What the batches of one run have reported: a bit per batch number, their summed counts, and the batches
    that failed someone (a retry looks those up in job-failures).

    Constant-sized whatever the run's batch count (a bit per batch): the job's progress value is written to the
    changelog on every BatchCompleted, and with a pair of counts per batch a 1,000,000-learner job (5,000
    batches) rewrote ~75 KB each time, O(batches^2) bytes in all.
    """

    bits: int = 0
    succeeded: int = 0
    failed: int = 0
    suppressed: int = 0
    failed_batches: list[int] = field(default_factory=list)  # batches with failed > 0, in report order

    def has(self, batch_no: int) -> bool:
        return bool(self.bits >> batch_no & 1)

    def add(self, batch_no: int, succeeded: int, failed: int, suppressed: int) -> bool:
        """Count a batch once; False when it was already counted (reported again after a crash)."""
        if self.has(batch_no):
            return False
        self.bits |= 1 << batch_no
        self.succeeded += succeeded
        self.failed += failed
        self.suppressed += suppressed
        if failed:
            self.failed_batches.append(batch_no)
        return True

    @property
    def count(self) -> int:
        return self.bits.bit_count()

    def to_dict(self) -> dict[str, Any]:
        return {"bits": format(self.bits, "x"), "sums": [self.succeeded, self.failed, self.suppressed],
                "failed": list(self.failed_batches)}

    @classmethod
    def from_dict(cls, raw: Stored) -> RunReports:
        _check_keys("job-progress run reports", raw, ("bits", "sums", "failed"))
        succeeded, failed, suppressed = (int(v) for v in raw["sums"])
        return cls(int(raw["bits"], 16), succeeded, failed, suppressed, [int(b) for b in raw["failed"]])

    @classmethod
    def from_batches(cls, batches: Mapping[str, Any]) -> RunReports:
        """The old stored form: batch -> [succeeded, failed(, suppressed)]."""
        reports = cls()
        for batch, v in sorted(batches.items(), key=lambda item: int(item[0])):
            reports.add(int(batch), int(v[0]), int(v[1]), int(v[2]) if len(v) > 2 else 0)
        return reports


def locations_key(job_id: str, run: int) -> str:
    """The job-progress key of where a run's batches lie in the log: written once, when the run is dispatched,
    apart from the job's value that is rewritten on every report (expiry reads the job id before the ':')."""
    return f"{job_id}:locations:{run}"


def is_job_key(key: str) -> bool:
    """A job-progress key holding a JobProgress (not a run's locations)."""
    return ":" not in key


@dataclass(slots=True)
class JobProgress:
    """The life of one job after routing (streams.agents.progress): its runs, which batches of each are done,
    whom each retry run serves, cancellation and a pending retry. Where each run's batches lie in the log is kept
    under its own key (``locations_key``); ``locations`` holds only what an older worker stored in the value.

    A job's first run (0) serves everyone; each retry run n serves a chosen set of earlier failures
    (``included``). A learner's standing is decided by the last run that served them.
    """

    total: int | None = None  # recipients of the job, from JobAccepted
    runs: dict[int, int] = field(default_factory=dict)  # run -> batch count
    done: dict[int, RunReports] = field(default_factory=dict)  # run -> what its batches reported
    locations: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # older workers': run -> places
    included: dict[int, list[int]] = field(default_factory=dict)  # retry run -> userids it serves
    completed_runs: list[int] = field(default_factory=list)
    cancelled: bool = False
    retry_pending: bool | None = None  # a retry asked for (only_retryable), started once every run completed
    touched: float | None = None  # last sign of life, for the stall sweeper
    served: dict[str, int] = field(default_factory=dict)  # learners served per provider/backend, every run

    # -- progress --

    def record_batch(self, run: int, batch_no: int, batch_count: int, succeeded: int, failed: int,
                     sent_by: Mapping[str, int] | None = None, suppressed: int = 0) -> bool:
        """Count a batch once; False when it was already counted (reported again after a crash)."""
        self.runs.setdefault(run, batch_count)
        if not self.done.setdefault(run, RunReports()).add(batch_no, succeeded, failed, suppressed):
            return False
        for provider, count in (sent_by or {}).items():
            self.served[provider] = self.served.get(provider, 0) + count
        return True

    def run_totals(self, run: int) -> tuple[int, int, int] | None:
        """(succeeded, failed, suppressed) of a run whose batches have all reported and that is not yet marked
        completed."""
        expected = self.runs.get(run)
        run_done = self.done.get(run, RunReports())
        if expected is None or self.total is None or run_done.count < expected or run in self.completed_runs:
            return None
        return run_done.succeeded, run_done.failed, run_done.suppressed

    def all_runs_completed(self) -> bool:
        return bool(self.runs) and set(self.runs) <= set(self.completed_runs)

    def unfinished_batches(self, run: int, where: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """(batch_no, partition, offset) of the batches of ``run`` not yet reported whose location is known
        (``where``: the run's locations, batch by batch)."""
        done = self.done.get(run, RunReports())
        return [(b, *where[b]) for b in range(self.runs[run]) if not done.has(b) and b < len(where)]

    # -- retries --

    def current_failures(self, failures_of: Callable[[int, int], Iterable[tuple[int, bool]]]) -> dict[int, Failure]:
        """userid -> where and how they last failed. ``failures_of(run, batch)`` gives (userid, retryable) pairs."""
        failed: dict[int, Failure] = {}
        for run in sorted(self.runs):
            for userid in self.included.get(run, []):
                failed.pop(userid, None)
            for batch in sorted(self.done[run].failed_batches if run in self.done else []):
                for userid, retryable in failures_of(run, batch):
                    failed[userid] = Failure(bool(retryable), run, batch)
        return failed

    def next_run(self) -> int:
        return max(self.runs) + 1

    def add_run(self, run: int, batch_count: int, userids: list[int]) -> None:
        """Record a retry run's batch count and whom it serves (its locations go under their own key)."""
        self.runs[run] = batch_count
        self.included[run] = list(userids)

    # -- stored form --

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "runs": {str(r): n for r, n in self.runs.items()},
            "reported": {str(r): reports.to_dict() for r, reports in self.done.items()},
            "included": {str(r): list(u) for r, u in self.included.items()},
            "completed_runs": list(self.completed_runs),
            "retry_pending": self.retry_pending,
        }
        if self.locations:
            out["locations"] = {str(r): [list(w) for w in where] for r, where in self.locations.items()}
        if self.total is not None:
            out["total"] = self.total
        if self.cancelled:
            out["cancelled"] = True
        if self.touched is not None:
            out["touched"] = self.touched
        if self.served:
            out["served"] = dict(self.served)
        return out

    @classmethod
    def from_dict(cls, raw: Stored) -> JobProgress:
        _check_keys("job-progress", raw, _JOB_PROGRESS_KEYS)
        # Every key is optional in the stored form: the old code added each one when it first needed it.
        runs, done, reported, locations, included = (_lazy(raw, key) for key in
                                                     ("runs", "done", "reported", "locations", "included"))
        return cls(
            total=int(raw["total"]) if "total" in raw else None,
            runs={int(r): int(n) for r, n in runs.items()},
            # "done" (batch -> counts) is what workers before RunReports wrote; read once, written compact.
            done={int(r): RunReports.from_batches(batches) for r, batches in done.items()}
            | {int(r): RunReports.from_dict(v) for r, v in reported.items()},
            locations={int(r): [(int(p), int(o)) for p, o in where] for r, where in locations.items()},
            included={int(r): [int(u) for u in userids] for r, userids in included.items()},
            completed_runs=[int(r) for r in raw["completed_runs"]] if "completed_runs" in raw else [],
            cancelled=bool(raw["cancelled"]) if "cancelled" in raw else False,
            retry_pending=bool(raw["retry_pending"]) if raw.get("retry_pending") is not None else None,
            touched=float(raw["touched"]) if "touched" in raw else None,
            served={str(k): int(v) for k, v in _lazy(raw, "served").items()},
        )


# --- callbacks -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingCallback:
    """One callback to Moodle waiting to be delivered, with its attempts so far and when to try next."""

    callback_id: str
    event: str
    run: int
    milestone: int | None
    body: str
    attempt: int
    first_at: float
    next_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"callback_id": self.callback_id, "event": self.event, "run": self.run, "milestone": self.milestone,
                "body": self.body, "attempt": self.attempt, "first_at": self.first_at, "next_at": self.next_at}

    @classmethod
    def from_dict(cls, raw: Stored) -> PendingCallback:
        _check_keys("callbacks.pending", raw, cls.__dataclass_fields__)
        return cls(callback_id=raw["callback_id"], event=raw["event"], run=int(raw["run"]),
                   milestone=raw["milestone"], body=raw["body"], attempt=int(raw["attempt"]),
                   first_at=float(raw["first_at"]), next_at=float(raw["next_at"]))


@dataclass(slots=True)
class CallbackQueue:
    """A job's callbacks (streams.agents.callbacks): where to send them, the first run's progress for the
    milestones (dropped once the run completes), every callback ever queued (so a re-read event queues nothing
    twice), and those still to deliver, in order."""

    company_id: int
    url: str  # without its query: that is sealed (security.callback_urls), opened only to send
    key_id: str | None
    total: int
    sealed: str | None = None  # the sealed query; absent in entries written before queries were sealed
    # what run 0's batches reported (a bit per batch and the sums, as in JobProgress); None once it completed
    done: RunReports | None = field(default_factory=RunReports)
    queued: list[str] = field(default_factory=list)
    pending: list[PendingCallback] = field(default_factory=list)

    def progress(self) -> tuple[int, int, int]:
        """(succeeded, failed, suppressed) of the first run so far."""
        done = self.done or RunReports()
        return done.succeeded, done.failed, done.suppressed

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"company_id": self.company_id, "url": self.url, "sealed": self.sealed,
                               "key_id": self.key_id, "total": self.total, "queued": list(self.queued),
                               "pending": [p.to_dict() for p in self.pending]}
        if self.done is not None:
            out["reported"] = self.done.to_dict()
        return out

    @classmethod
    def from_dict(cls, raw: Stored) -> CallbackQueue:
        _check_keys("callbacks", raw, ("company_id", "url", "sealed", "key_id", "total", "done", "reported", "queued",
                                       "pending"))
        return cls(
            company_id=int(raw["company_id"]), url=raw["url"], key_id=raw["key_id"], total=int(raw["total"]),
            sealed=raw.get("sealed"),  # absent in entries written before callback queries were sealed
            # Absent once the first run has completed: no more milestones.
            # "done" (batch -> counts) is the form workers before RunReports wrote.
            done=RunReports.from_dict(raw["reported"]) if "reported" in raw
            else RunReports.from_batches(raw["done"]) if "done" in raw else None,
            queued=list(raw["queued"]),
            pending=[PendingCallback.from_dict(p) for p in raw["pending"]],
        )
