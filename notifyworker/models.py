"""The shapes that cross module boundaries: job rows, statuses, outcomes, the rate rule."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NewType

JobId = NewType("JobId", int)
WorkerId = NewType("WorkerId", str)

# What a rate (job starts per second) may be: 0 (unlimited), or finite and
# within these bounds. The same rule guards the settings, the CLI, the limiter
# and, as the CHECK `rate_in_bounds`, notifyworker.settings (sql/migrations):
# below the minimum a rate is a stop in disguise (1e-320 is one start per
# 10^312 years); NaN and infinity are no rate at all.
MIN_RATE = 0.001
MAX_RATE = 100_000.0


def pickup_seconds(created_at: datetime, started_at: datetime) -> float:
    """Pickup latency, the figure this project is measured by: from the INSERT
    to the handler's start, both on the database's clock (never negative).
    `summary_since` in the SQL computes the same for a run's percentiles."""
    return max((started_at - created_at).total_seconds(), 0.0)


def rate_problem(rate: float) -> str | None:
    """Why `rate` is not an acceptable rate, or None when it is."""
    if rate == 0 or MIN_RATE <= rate <= MAX_RATE:  # NaN fails every comparison
        return None
    return (
        f"rate must be 0 (unlimited) or between {MIN_RATE:g} and {MAX_RATE:g} "
        f"job starts per second, not {rate:g}"
    )


# A queue's and a job's limits (sql/migrations/0014_queues.sql): the same
# bounds as the CHECKs of notifyworker.jobs and notifyworker.queues, so the
# producer and the CLI refuse a value with a clear message before sending it.
DEFAULT_QUEUE = "default"
MAX_QUEUE_NAME = 100
MAX_LIMIT_KEY = 200
MIN_PRIORITY, MAX_PRIORITY = -1_000_000, 1_000_000
MIN_CONCURRENCY, MAX_CONCURRENCY = 1, 100_000
# The whitespace the CHECKs name (PostgreSQL's translate() set), and NUL, which
# no text column can hold.
_NOT_IN_A_NAME = re.compile("[ \t\r\n\x0b\f\x00]")


def queue_problem(name: object) -> str | None:
    """Why `name` is not a queue's name (queue_is_a_name, name_is_a_name), or None."""
    if not isinstance(name, str):
        return f"a queue's name must be a string, not {type(name).__name__}"
    if not 1 <= len(name) <= MAX_QUEUE_NAME or _NOT_IN_A_NAME.search(name):
        return (
            f"a queue's name must be 1 to {MAX_QUEUE_NAME} characters without whitespace,"
            f" not {name[:120]!r}"
        )
    return None


def priority_problem(priority: object) -> str | None:
    """Why `priority` is not a job's priority (priority_in_range), or None."""
    if not isinstance(priority, int) or isinstance(priority, bool):
        return f"priority must be a whole number, not {type(priority).__name__}"
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        return f"priority must be between {MIN_PRIORITY:,} and {MAX_PRIORITY:,}, not {priority:,}"
    return None


def limit_key_problem(key: object) -> str | None:
    """Why `key` is not a job's limit_key (limit_key_1_to_200_characters), or None."""
    if not isinstance(key, str):
        return f"limit_key must be a string, not {type(key).__name__}"
    if not 1 <= len(key) <= MAX_LIMIT_KEY or "\x00" in key:
        return f"limit_key must be 1 to {MAX_LIMIT_KEY} characters (no NUL), not {key[:220]!r}"
    return None


def key_rate_problem(rate: float) -> str | None:
    """Why `rate` is not a queue's key_rate (key_rate_in_bounds: no 0), or None."""
    if MIN_RATE <= rate <= MAX_RATE:  # NaN fails every comparison
        return None
    return f"key rate must be between {MIN_RATE:g} and {MAX_RATE:g} starts per second, not {rate:g}"


def concurrency_problem(value: int) -> str | None:
    """Why `value` is not a queue's (key_)concurrency (concurrency_in_bounds), or None."""
    if MIN_CONCURRENCY <= value <= MAX_CONCURRENCY:
        return None
    return f"must be between {MIN_CONCURRENCY} and {MAX_CONCURRENCY:,} jobs, not {value:,}"


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One line of `notifyworker queues`: a queue's settings and what it holds now."""

    name: str
    configured: bool  # it has a row in notifyworker.queues
    rate: float | None  # None: each worker's own rate; 0: unpaced
    concurrency: int | None
    key_rate: float | None
    key_concurrency: int | None
    paused: bool
    waiting: int  # status `new`, counted up to the cap (more: waiting > cap)
    held: int  # queued or running
    pickup_p50_ms: float | None  # jobs finished in the last minutes; None: none
    updated_at: datetime | None


JobStatus = Literal["new", "queued", "running", "done", "failed", "cancelled"]
FinalStatus = Literal["done", "failed", "cancelled"]
FINAL_STATUSES: tuple[FinalStatus, ...] = ("done", "failed", "cancelled")


# Retention: finished jobs are deleted once older than their status's period.
# A duration is a number of seconds with an optional unit; "forever" keeps a
# status's jobs (settings only). Longer than a century is a mistake, not a plan
# (and would overflow PostgreSQL's interval arithmetic at some point): refused.
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
MAX_DURATION = 36_500 * 86_400.0
FOREVER = "forever"
DURATION_FORMAT = "a number of seconds with an optional unit s, m, h, d or w (90, 30m, 12h, 7d)"
_DURATION = re.compile(r"^\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> float:
    """Seconds in `text` ("90", "90s", "30m", "12h", "7d", "2w"); ValueError saying why not."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"{text.strip()!r} is not a duration: use {DURATION_FORMAT}")
    seconds = float(match[1]) * DURATION_UNITS[match[2] or "s"]
    if problem := duration_problem(seconds):
        raise ValueError(problem)
    return seconds


def duration_problem(seconds: float) -> str | None:
    """Why `seconds` is not an acceptable retention period, or None when it is."""
    if 0 < seconds <= MAX_DURATION:  # NaN fails every comparison
        return None
    if seconds > MAX_DURATION:
        return f"must be at most 36500d (a century), not {seconds:g}s"
    return f"must be more than 0 seconds, not {seconds:g}"


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished jobs are kept, in seconds, per final status; None: forever."""

    done: float | None
    failed: float | None
    cancelled: float | None

    @classmethod
    def everything_older_than(cls, seconds: float) -> Retention:
        return cls(seconds, seconds, seconds)

    def rules(self) -> list[tuple[FinalStatus, float]]:
        """(status, seconds) for each status whose jobs are ever deleted."""
        periods = zip(FINAL_STATUSES, (self.done, self.failed, self.cancelled), strict=True)
        return [(status, seconds) for status, seconds in periods if seconds is not None]


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What one batch of the pruner deleted, by status."""

    deleted: dict[FinalStatus, int]
    full: bool  # as many as the batch may hold: more are probably due

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job this worker holds (status `queued`), as the claim returned it."""

    id: JobId
    task: str
    payload: str | None  # JSON text, parsed by the task's model; None: too large to fetch
    timeout: float  # seconds
    claimed_at: datetime  # the row's queued_at: the fence the marks carry back
    attempt: int  # which start this is, counting from 1
    max_attempts: int
    created_at: datetime  # the INSERT, on the database's clock
    stored_bytes: int  # the payload's size as stored (compressed, maybe): checked before fetching
    queue: str = "default"
    # Seconds from the claim until its fleet start slot; None: the worker's own pace.
    start_in: float | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended, as the consumer records it."""

    status: FinalStatus
    result: Any = None
    error: str | None = None
    # A failure or cancellation worth another attempt (if the job has any
    # left): a handler's exception or a timeout, not bad input or a cancel.
    retryable: bool = False


def will_retry(outcome: Outcome, attempts: int, max_attempts: int) -> bool:
    """Whether the table sends the job back to `new` after this outcome.

    The twin of notifyworker.will_retry_v1 (sql/migrations/0008_settle.sql),
    which decides; this one only words the log line. `attempts` counts the
    attempt that just ended, if it started.
    """
    return outcome.status != "done" and outcome.retryable and attempts < max_attempts


@dataclass(frozen=True, slots=True)
class StartMark:
    """A job's handler started at `at` (the worker's clock)."""

    job_id: JobId
    claimed_at: datetime
    at: datetime


@dataclass(frozen=True, slots=True)
class FinishMark:
    """A job ended at `at`; `started_at` is None when no handler ever ran."""

    job_id: JobId
    claimed_at: datetime
    outcome: Outcome
    started_at: datetime | None
    at: datetime


@dataclass(frozen=True, slots=True)
class JobRow:
    """A row of the classic job table."""

    id: JobId
    task: str
    object_id: str | None
    payload: dict[str, Any]
    status: JobStatus
    attempts: int
    max_attempts: int
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancelled_at: datetime | None
    error: str | None


@dataclass(frozen=True, slots=True)
class JobStory(JobRow):
    """Every column of one job, for `notifyworker job ID`."""

    lost_claims: int
    worker_id: str | None
    timeout: float  # seconds
    run_at: datetime
    retries: int  # times notifyworker.retry() sent it back
    retried_at: datetime | None  # the last of them
    attempts_before_retry: int  # its starts by then
    error_before_retry: str | None  # its error then
    result: Any  # any JSON value the handler returned; None: no result (or JSON null)
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    limit_key: str | None = None


@dataclass(frozen=True, slots=True)
class FoundJobs:
    """What `notifyworker jobs` found: the rows, and how far back it looked."""

    rows: list[JobRow]
    # None: the whole table (an index bounded the scan, or no filter needed one);
    # else only the latest this many jobs were looked at.
    window: int | None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The backoff between attempts, in seconds: base x 2^(attempt-1), capped, jittered."""

    base: float
    cap: float


@dataclass(frozen=True, slots=True)
class Flushed:
    """What writing a batch of marks found."""

    # Attempts (job, claim stamp) no longer this worker's: stop their handlers.
    refused: frozenset[tuple[JobId, datetime]] = frozenset()
    retries_in: tuple[float, ...] = ()  # seconds until each retry it scheduled is due

    def __or__(self, other: Flushed) -> Flushed:
        return Flushed(self.refused | other.refused, self.retries_in + other.retries_in)


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep did, for the log."""

    overdue_retried: int = 0
    overdue_cancelled: int = 0
    dead_workers: int = 0
    rescued_requeued: int = 0
    rescued_retried: int = 0
    rescued_cancelled: int = 0
    skipped: bool = False
    # Seconds since any sweeper of the fleet last finished a round (0: this one just did).
    last_sweep_age: float = 0.0
    retries_in: tuple[float, ...] = ()  # seconds until each retry it scheduled is due

    @property
    def acted(self) -> bool:
        return bool(
            self.overdue_retried
            or self.overdue_cancelled
            or self.dead_workers
            or self.rescued_requeued
            or self.rescued_retried
            or self.rescued_cancelled
        )


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts and pickup latency of a run, for `up --duration`."""

    done: int
    cancelled: int
    failed: int
    unfinished: int
    pickup_p50_ms: float | None
    pickup_p99_ms: float | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The table's word on an attempt a worker holds that is no longer its own."""

    job_id: JobId
    claimed_at: datetime
    reason: str
